// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import java.lang.System.Logger.Level;

/**
 * Listens for vfio-pci's device request (the REQ interrupt, index 4): the kernel asks the user for the device back
 * when it is unbound from vfio-pci or removed, and then waits until every descriptor of the device is closed —
 * uninterruptibly once the unbinding process has been signalled, so an {@code echo BDF > .../vfio-pci/unbind} hangs
 * for as long as the user keeps the device. It repeats the request every 10 s while it waits. QEMU (which unplugs the
 * device from the guest) and DPDK listen for it; a driver here releases the device when {@code onRequest} runs.
 *
 * <p>One platform daemon thread blocks on the eventfd VFIO signals and runs {@code onRequest} on every request until
 * {@link #close()}, which may be called from any thread, {@code onRequest} included.
 */
public final class DeviceRequest implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(DeviceRequest.class.getName());

    private final VfioDevice device;
    private final EventFd eventfd;
    private final Runnable onRequest;
    private volatile boolean stopping;
    /** Guards the eventfd's closing against a signal to it: a closed number may be reused at once by another open. */
    private final Object lock = new Object();

    private boolean closedFd;

    private DeviceRequest(VfioDevice device, EventFd eventfd, Runnable onRequest) {
        this.device = device;
        this.eventfd = eventfd;
        this.onRequest = onRequest;
    }

    /**
     * Wires an eventfd to the device's REQ interrupt and starts the thread that waits on it; null when the device has
     * no REQ interrupt VFIO can signal through an eventfd (not a vfio-pci device).
     */
    public static DeviceRequest watch(VfioDevice device, Runnable onRequest) throws VfioException {
        if (!device.info().pci() || device.info().numIrqs() <= VfioAbi.PCI_REQ_IRQ_INDEX) {
            return null;
        }
        IrqInfo req = device.irqInfo(VfioAbi.PCI_REQ_IRQ_INDEX);
        if (req.count() < 1 || !req.eventfd()) {
            return null;
        }
        EventFd e;
        try {
            e = EventFd.create(false); // the watching thread blocks in read
        } catch (LinuxException x) {
            throw new VfioException(
                    "cannot create an eventfd for " + device.name() + "'s device request: " + x.getMessage(), x);
        }
        try {
            device.setIrqEventFds(VfioAbi.PCI_REQ_IRQ_INDEX, 0, java.util.List.of(e));
        } catch (VfioException | RuntimeException x) {
            e.close();
            throw x;
        }
        DeviceRequest r = new DeviceRequest(device, e, onRequest);
        Thread.ofPlatform()
                .daemon()
                .name("iovirt vfio " + device.name() + " device request")
                .start(r::run);
        return r;
    }

    private void run() {
        try {
            while (!stopping) {
                try {
                    eventfd.read();
                } catch (LinuxException e) {
                    LOG.log(
                            Level.ERROR,
                            "{0}: waiting for device requests failed, no longer listening: {1}",
                            device.name(),
                            e.getMessage());
                    return;
                }
                if (stopping) {
                    return;
                }
                try {
                    onRequest.run();
                } catch (RuntimeException e) {
                    // the kernel asks again in 10 s
                    LOG.log(
                            Level.ERROR,
                            "{0}: releasing the device at the host''s request failed: {1}",
                            device.name(),
                            e.toString());
                }
            }
        } finally {
            synchronized (lock) { // only this thread reads it: closed when nobody can be blocked on it
                closedFd = true;
                eventfd.close();
            }
        }
    }

    /**
     * Stops listening: the REQ interrupt is disabled (closing the device does that too) and the thread ends; it
     * closes the eventfd. Idempotent.
     */
    @Override
    public void close() {
        synchronized (lock) {
            if (stopping) {
                return;
            }
            stopping = true;
        }
        try {
            if (device.isOpen()) {
                device.disableIrq(VfioAbi.PCI_REQ_IRQ_INDEX);
            }
        } catch (VfioException | RuntimeException e) {
            // a closed device has no trigger left
        }
        synchronized (lock) {
            if (!closedFd) {
                try {
                    eventfd.signal(); // wakes the thread's read (a no-op when close runs on that thread)
                } catch (LinuxException | RuntimeException e) {
                    // the thread is gone, or about to go: it sees stopping
                }
            }
        }
    }
}
