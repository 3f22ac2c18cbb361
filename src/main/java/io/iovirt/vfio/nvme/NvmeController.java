// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio.nvme;

import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.LinuxException;
import io.iovirt.nvme.IdentifyController;
import io.iovirt.nvme.IdentifyNamespace;
import io.iovirt.vfio.DeviceRequest;
import io.iovirt.vfio.DmaArena;
import io.iovirt.vfio.DmaBuffer;
import io.iovirt.vfio.IrqInfo;
import io.iovirt.vfio.MmioRegion;
import io.iovirt.vfio.VfioDevice;
import io.iovirt.vfio.VfioException;
import io.iovirt.vfio.VfioSession;
import java.lang.System.Logger.Level;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * A user-space NVMe driver over VFIO: it maps BAR0, puts the admin and one I/O queue pair in IOMMU-mapped memory,
 * brings the controller up (disable, admin queues, enable within CAP.TO), identifies it and its first active
 * namespace, and reads and writes logical blocks with PRP data pointers. Completions are found by polling the CQ
 * phase tag, or by waiting on the eventfd VFIO signals for the queue's MSI-X, MSI or INTx interrupt.
 *
 * <p>Every address given to the controller lies in the controller's {@link DmaArena}; buffers passed to
 * {@link #read}/{@link #write} must come from {@link #allocateBuffer}. One thread at a time drives a controller.
 * {@link #close()} shuts the controller down (CC.SHN), disables it and its interrupts, and unmaps BAR0; the DMA
 * arena goes with the {@link VfioSession}.
 *
 * <p>When the host asks for the device back (vfio-pci's device request: an unbind from vfio-pci, a removal), the
 * controller logs it, closes itself and then the whole {@link VfioSession} — the kernel's unbind waits until the
 * device is closed, and the device can go to another driver once the group and container are closed too. Commands
 * in flight then, and every later one, fail with that reason.
 */
public final class NvmeController implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger(NvmeController.class.getName());
    /** How completions are noticed. AUTO: MSI-X, else MSI, else INTx. */
    public enum IrqMode {
        AUTO,
        POLL,
        MSIX,
        MSI,
        INTX
    }

    /**
     * @param ioQueueDepth entries in the I/O SQ and CQ (at most depth-1 commands in flight)
     * @param dataBytes    DMA memory reserved for {@link #allocateBuffer}
     * @param iovaBase     where the DMA arena is mapped in the device's address space; never 0, so IOVA 0 stays
     *     unmapped and a device that uses a zero pointer (a PRP2 or metadata pointer left 0) faults in the IOMMU
     *     instead of writing over the admin submission queue, which is the arena's first page
     */
    public record Options(IrqMode irqMode, int ioQueueDepth, long dataBytes, long iovaBase, Duration commandTimeout) {
        public Options {
            if (ioQueueDepth < 2 || ioQueueDepth > 4096) {
                throw new IllegalArgumentException("I/O queue depth must be 2..4096: " + ioQueueDepth);
            }
            if (dataBytes < 0 || dataBytes > (1L << 34)) {
                throw new IllegalArgumentException("data pool size out of range: " + dataBytes);
            }
            if ((iovaBase & 0xfff) != 0) {
                throw new IllegalArgumentException("IOVA base must be page aligned: 0x" + Long.toHexString(iovaBase));
            }
            if (iovaBase == 0) {
                throw new IllegalArgumentException("IOVA base 0 is refused: the admin submission queue would sit at "
                        + "IOVA 0, where a controller given a zero data or metadata pointer writes; choose a base "
                        + "above 0 (the default is 0x100000)");
            }
        }

        public static Options defaults() {
            return new Options(IrqMode.AUTO, 64, 1 << 20, 0x10_0000L, Duration.ofSeconds(30));
        }

        public Options withIrqMode(IrqMode m) {
            return new Options(m, ioQueueDepth, dataBytes, iovaBase, commandTimeout);
        }

        public Options withIoQueueDepth(int d) {
            return new Options(irqMode, d, dataBytes, iovaBase, commandTimeout);
        }

        public Options withDataBytes(long b) {
            return new Options(irqMode, ioQueueDepth, b, iovaBase, commandTimeout);
        }

        public Options withCommandTimeout(Duration t) {
            return new Options(irqMode, ioQueueDepth, dataBytes, iovaBase, t);
        }
    }

    static final long PAGE = 4096;
    private static final int ADMIN_DEPTH = 32;
    /** The one I/O queue pair's identifier, the highest queue identifier in use. */
    private static final int IO_QID = 1;

    private static final int PCI_COMMAND = 0x04;
    private static final int PCI_COMMAND_MEMORY = 1 << 1;
    private static final int PCI_COMMAND_MASTER = 1 << 2;
    private static final int PCI_COMMAND_INTX_DISABLE = 1 << 10;

    private final VfioSession session;
    private final VfioDevice device;
    private final Options options;
    private MmioRegion bar;
    private NvmeRegs.Capabilities cap;
    private DmaArena arena;
    private QueuePair admin;
    private QueuePair io;
    private DmaBuffer scratch;
    private DmaBuffer[] prpLists;
    private final List<EventFd> eventfds = new ArrayList<>();
    /** Those of {@link #eventfds} no waiter owns yet (a waiter closes its own). */
    private final List<EventFd> unownedEventfds = new ArrayList<>();

    private DeviceRequest request;
    private CompletionWaiter adminWaiter = CompletionWaiter.polling();
    private CompletionWaiter ioWaiter = CompletionWaiter.polling();
    private IrqMode irqMode = IrqMode.POLL;
    private IdentifyController identity;
    private IdentifyNamespace namespace;
    private long maxTransfer;
    private volatile boolean failed;
    private volatile boolean closed;
    /** Why the controller was closed when its owner did not ask for it, or null. */
    private volatile String closeReason;
    /** Set by {@link #close()} once the controller is disabled: commands still in flight will never complete. */
    private volatile boolean shutDown;
    /** Set first by {@link #close()}: I/O loops stop submitting so the commands in flight can drain. */
    private volatile boolean quiescing;

    private final long[] prp = new long[2];

    private NvmeController(VfioSession session, Options options) {
        this.session = session;
        this.device = session.device();
        this.options = options;
    }

    /** Brings the controller up and creates one I/O queue pair; on failure everything done so far is undone. */
    public static NvmeController open(VfioSession session, Options options) throws VfioException {
        NvmeController c = new NvmeController(session, options);
        try {
            c.start();
            return c;
        } catch (VfioException | RuntimeException e) {
            c.close();
            throw e;
        }
    }

    private void start() throws VfioException {
        int classCode = device.readConfig(0x08, 4) >>> 8;
        if (classCode != 0x010802) {
            throw new NvmeException(String.format(
                    "%s is not an NVMe controller (PCI class %06x, NVMe is 010802)", device.name(), classCode));
        }
        bar = device.mapRegion(0);
        if ((bar.read32(NvmeRegs.CSTS) & NvmeRegs.CSTS_CFS) != 0
                && device.info().resettable()) {
            // a controller left in fatal status (by a crashed earlier user) only recovers through a reset
            device.reset();
        }
        cap = new NvmeRegs.Capabilities(bar.read64(NvmeRegs.CAP));
        if (!cap.nvmCommandSet()) {
            throw new NvmeException(device.name() + " does not support the NVM command set (CAP.CSS)");
        }
        if (cap.minPageShift() > 12 || cap.maxPageShift() < 12) {
            throw new NvmeException(String.format(
                    "%s supports memory pages of 2^%d..2^%d bytes; this driver uses 4 KiB",
                    device.name(), cap.minPageShift(), cap.maxPageShift()));
        }
        NvmeRegs.requireDoorbellsInside(device.name(), cap, IO_QID, bar.size());
        int ioDepth = Math.min(options.ioQueueDepth(), cap.maxQueueEntries());
        int adminDepth = Math.min(ADMIN_DEPTH, cap.maxQueueEntries());

        long bytes = round(adminDepth * Sqe.SIZE)
                + round(adminDepth * Cqe.SIZE)
                + PAGE
                + round(ioDepth * Sqe.SIZE)
                + round(ioDepth * Cqe.SIZE)
                + (long) (ioDepth - 1) * PAGE
                + round(options.dataBytes());
        arena = session.createDmaArena(options.iovaBase(), bytes);

        disable();
        enableBusMaster();
        admin = new QueuePair(
                0,
                adminDepth,
                arena.allocate(adminDepth * Sqe.SIZE, PAGE),
                arena.allocate(adminDepth * Cqe.SIZE, PAGE),
                bar,
                cap.doorbellStride(),
                this::markFailed);
        scratch = arena.allocate(PAGE, PAGE);
        setUpInterrupts();

        bar.write32(NvmeRegs.AQA, (adminDepth - 1) << 16 | (adminDepth - 1));
        bar.write64(NvmeRegs.ASQ, admin.sq.iova());
        bar.write64(NvmeRegs.ACQ, admin.cq.iova());
        bar.write32(
                NvmeRegs.CC,
                NvmeRegs.CC_EN
                        | NvmeRegs.CC_CSS_NVM
                        | 0 << NvmeRegs.CC_MPS_SHIFT
                        | NvmeRegs.CC_AMS_RR
                        | NvmeRegs.SQES_LOG2 << NvmeRegs.CC_IOSQES_SHIFT
                        | NvmeRegs.CQES_LOG2 << NvmeRegs.CC_IOCQES_SHIFT);
        waitReady(true);

        identity = identifyController();
        if (!identity.supportsStandardEntrySizes()) {
            throw new NvmeException(String.format(
                    "%s does not accept 64-byte SQ / 16-byte CQ entries (SQES %#x, " + "CQES %#x)",
                    device.name(), identity.sqes(), identity.cqes()));
        }
        long mdts = identity.maxTransferBytes(cap.minPageShift());
        maxTransfer = mdts == 0 ? Prp.maxTransfer(PAGE) : Math.min(mdts, Prp.maxTransfer(PAGE));
        int nsid = firstActiveNamespace();
        namespace = identifyNamespace(nsid);
        requireDataOnly(device.name(), namespace);

        // One I/O queue pair: ask for it (Number of Queues is zero-based) and check what was granted.
        int granted = adminCommand(
                "Set Features (Number of Queues)",
                NvmeRegs.ADMIN_SET_FEATURES,
                0,
                0,
                0,
                NvmeRegs.FEATURE_NUMBER_OF_QUEUES,
                0,
                0);
        if ((granted & 0xffff) == 0xffff || (granted >>> 16) == 0xffff) {
            throw new NvmeException(device.name() + " granted no I/O queues (Number of Queues: 0x"
                    + Integer.toHexString(granted) + ")");
        }
        DmaBuffer ioSq = arena.allocate(ioDepth * Sqe.SIZE, PAGE);
        DmaBuffer ioCq = arena.allocate(ioDepth * Cqe.SIZE, PAGE);
        prpLists = new DmaBuffer[ioDepth - 1];
        for (int i = 0; i < prpLists.length; i++) {
            prpLists[i] = arena.allocate(PAGE, PAGE);
        }
        io = new QueuePair(IO_QID, ioDepth, ioSq, ioCq, bar, cap.doorbellStride(), this::markFailed);
        int vector = eventfds.size() > 1 ? 1 : 0;
        int ien = irqMode == IrqMode.POLL ? 0 : 2;
        adminCommand(
                "Create I/O Completion Queue",
                NvmeRegs.ADMIN_CREATE_CQ,
                0,
                ioCq.iova(),
                0,
                (ioDepth - 1) << 16 | 1,
                vector << 16 | ien | 1,
                0);
        try {
            adminCommand(
                    "Create I/O Submission Queue",
                    NvmeRegs.ADMIN_CREATE_SQ,
                    0,
                    ioSq.iova(),
                    0,
                    (ioDepth - 1) << 16 | 1,
                    1 << 16 | 1,
                    0);
        } catch (NvmeException e) {
            adminCommand("Delete I/O Completion Queue", NvmeRegs.ADMIN_DELETE_CQ, 0, 0, 0, 1, 0, 0);
            throw e;
        }
        // Last, once the controller is up: a request before this is repeated by the kernel every 10 s.
        try {
            request = DeviceRequest.watch(device, this::releaseOnRequest);
        } catch (VfioException e) {
            // the driver works without it; only an unbind from vfio-pci then waits for this process to let go
            LOG.log(
                    Level.WARNING,
                    "{0}: cannot listen for the host''s device requests ({1}): an unbind from vfio-pci will wait "
                            + "until this process closes the device",
                    device.name(),
                    e.getMessage());
        }
    }

    private static long round(long bytes) {
        return (bytes + PAGE - 1) & -PAGE;
    }

    private void enableBusMaster() throws VfioException {
        int cmd = device.readConfig(PCI_COMMAND, 2);
        cmd |= PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        // INTx stays disabled unless it is how completions are signalled
        cmd = options.irqMode() == IrqMode.INTX ? cmd & ~PCI_COMMAND_INTX_DISABLE : cmd | PCI_COMMAND_INTX_DISABLE;
        device.writeConfig(PCI_COMMAND, 2, cmd);
    }

    /** Wires eventfds to the interrupt the options ask for (AUTO: MSI-X, else MSI, else INTx). */
    private void setUpInterrupts() throws VfioException {
        IrqMode want = options.irqMode();
        if (want == IrqMode.POLL) {
            irqMode = IrqMode.POLL;
            return;
        }
        IrqInfo msix = device.irqInfo(2);
        IrqInfo msi = device.irqInfo(1);
        IrqInfo intxInfo = device.irqInfo(0);
        IrqMode mode;
        IrqInfo info;
        if (want == IrqMode.MSIX || (want == IrqMode.AUTO && msix.count() > 0)) {
            mode = IrqMode.MSIX;
            info = msix;
        } else if (want == IrqMode.MSI || (want == IrqMode.AUTO && msi.count() > 0)) {
            mode = IrqMode.MSI;
            info = msi;
        } else {
            mode = IrqMode.INTX;
            info = intxInfo;
        }
        if (info.count() == 0 || !info.eventfd()) {
            throw new NvmeException(device.name() + " has no " + info.name() + " interrupt VFIO can signal through an "
                    + "eventfd (count " + info.count() + ") — choose another interrupt mode, or poll");
        }
        int vectors = mode == IrqMode.INTX ? 1 : Math.min(2, info.count());
        try {
            for (int i = 0; i < vectors; i++) {
                EventFd e = EventFd.create(true);
                eventfds.add(e);
                unownedEventfds.add(e);
            }
        } catch (LinuxException e) {
            throw new VfioException("cannot create eventfds for interrupts: " + e.getMessage(), e);
        }
        device.setIrqEventFds(info.index(), 0, eventfds);
        irqMode = mode;
        if (mode == IrqMode.INTX) {
            // an INTx enable from a device whose command register still says INTX_DISABLE would never fire
            device.writeConfig(PCI_COMMAND, 2, device.readConfig(PCI_COMMAND, 2) & ~PCI_COMMAND_INTX_DISABLE);
        }
        VfioDevice intx = mode == IrqMode.INTX ? device : null;
        adminWaiter = new CompletionWaiter.Interrupt(eventfds.get(0), intx, info.name() + " vector 0");
        unownedEventfds.remove(eventfds.get(0));
        if (vectors > 1) {
            ioWaiter = new CompletionWaiter.Interrupt(eventfds.get(1), null, info.name() + " vector 1");
            unownedEventfds.remove(eventfds.get(1));
        } else {
            ioWaiter = adminWaiter;
        }
    }

    private void disable() throws VfioException {
        int cc = bar.read32(NvmeRegs.CC);
        if ((cc & NvmeRegs.CC_EN) != 0) {
            bar.write32(NvmeRegs.CC, cc & ~NvmeRegs.CC_EN);
        }
        waitReady(false);
    }

    /** Waits up to CAP.TO for CSTS.RDY to become {@code ready}; a fatal status ends the wait at once. */
    private void waitReady(boolean ready) throws VfioException {
        long timeoutMs = Math.max(cap.readyTimeoutMillis(), 500);
        long deadline = System.nanoTime() + timeoutMs * 1_000_000;
        while (true) {
            int csts = bar.read32(NvmeRegs.CSTS);
            if (csts == -1) {
                throw new NvmeException(
                        device.name() + ": CSTS reads as all ones — the device is gone or its BAR is " + "not decoded");
            }
            if (ready && (csts & NvmeRegs.CSTS_CFS) != 0) {
                throw new NvmeException(device.name() + ": controller fatal status (CSTS.CFS) while enabling — check "
                        + "the admin queue addresses; the controller needs a reset");
            }
            if (((csts & NvmeRegs.CSTS_RDY) != 0) == ready) {
                return;
            }
            if (System.nanoTime() - deadline > 0) {
                throw new NvmeException(String.format(
                        "%s: CSTS.RDY did not become %d within CAP.TO = %d ms " + "(CSTS 0x%x)",
                        device.name(), ready ? 1 : 0, timeoutMs, csts));
            }
            sleepMillis(1);
        }
    }

    private static void sleepMillis(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    // ---- command execution --------------------------------------------------------------------------------------

    /** Runs one admin command to completion; returns DW0 of the completion. */
    private int adminCommand(String what, int opcode, int nsid, long prp1, long prp2, int cdw10, int cdw11, int cdw12)
            throws VfioException {
        return execute(admin, adminWaiter, what, allocate(admin, what), opcode, nsid, prp1, prp2, cdw10, cdw11, cdw12);
    }

    private int allocate(QueuePair q, String what) throws NvmeException {
        if (closed || failed) {
            String reason = closeReason;
            throw new NvmeException(what + ": the controller is "
                    + (reason != null
                            ? reason
                            : closed
                                    ? "closed"
                                    : "in an unknown state after an earlier failure; reopen it (which resets it)"));
        }
        int cid = q.allocate();
        if (cid < 0) {
            throw new IllegalStateException(q + " has no free command identifier");
        }
        return cid;
    }

    /** Submits under the already allocated {@code cid} and waits; returns DW0 or throws the decoded status. */
    private int execute(
            QueuePair q,
            CompletionWaiter w,
            String what,
            int cid,
            int opcode,
            int nsid,
            long prp1,
            long prp2,
            int cdw10,
            int cdw11,
            int cdw12)
            throws VfioException {
        try {
            q.submit(cid, opcode, nsid, prp1, prp2, cdw10, cdw11, cdw12, 0, 0, 0);
            awaitCommand(q, w, cid, what, opcode, cdw10, cdw11, cdw12);
        } catch (VfioException | RuntimeException e) {
            NvmeException closedUnder = closedError(describe(q, what, opcode, cdw10, cdw11, cdw12), e);
            if (closedUnder != null) {
                throw closedUnder;
            }
            throw e;
        }
        int status = q.lastStatus[cid];
        if (!NvmeStatus.success(status)) {
            throw NvmeException.failed(describe(q, what, opcode, cdw10, cdw11, cdw12), status);
        }
        return q.lastDw0[cid];
    }

    /** "Read LBA 8+8" for I/O commands, the name alone for admin commands; built only for messages. */
    private String describe(QueuePair q, String what, int opcode, int cdw10, int cdw11, int cdw12) {
        if (q == io && (opcode == NvmeRegs.NVM_READ || opcode == NvmeRegs.NVM_WRITE)) {
            long lba = Integer.toUnsignedLong(cdw10) | (long) cdw11 << 32;
            return what + " LBA " + lba + "+" + ((cdw12 & 0xffff) + 1);
        }
        return what;
    }

    private void awaitCommand(
            QueuePair q, CompletionWaiter w, int cid, String what, int opcode, int cdw10, int cdw11, int cdw12)
            throws VfioException {
        long timeout = options.commandTimeout().toNanos();
        long deadline = System.nanoTime() + timeout;
        while (true) {
            q.reap(null);
            w.afterReap();
            if (q.completed[cid]) {
                return;
            }
            if (shutDown) {
                throw new NvmeException(describe(q, what, opcode, cdw10, cdw11, cdw12)
                        + ": the controller was shut down with the command in flight");
            }
            long left = deadline - System.nanoTime();
            if (left <= 0) {
                failed = true; // the command may still complete and write its buffer: only a reset makes it safe
                int csts = bar.read32(NvmeRegs.CSTS);
                throw new NvmeException(String.format(
                        "%s timed out after %d ms on %s (CSTS 0x%x%s, completion by %s)"
                                + " — no completion was posted; if the command or its data pointed outside the DMA mappings, "
                                + "the IOMMU blocked the transfer (dmesg shows a DMAR fault); the controller must be reset",
                        describe(q, what, opcode, cdw10, cdw11, cdw12),
                        timeout / 1_000_000,
                        q,
                        csts,
                        (csts & NvmeRegs.CSTS_CFS) != 0 ? ", fatal status" : "",
                        w));
            }
            w.await(left);
        }
    }

    private IdentifyController identifyController() throws VfioException {
        adminCommand(
                "Identify Controller", NvmeRegs.ADMIN_IDENTIFY, 0, scratch.iova(), 0, NvmeRegs.CNS_CONTROLLER, 0, 0);
        return IdentifyController.parse(scratch.segment());
    }

    private int firstActiveNamespace() throws VfioException {
        adminCommand(
                "Identify (active namespace list)",
                NvmeRegs.ADMIN_IDENTIFY,
                0,
                scratch.iova(),
                0,
                NvmeRegs.CNS_ACTIVE_NAMESPACES,
                0,
                0);
        int nsid = scratch.segment().get(JAVA_INT_UNALIGNED, 0);
        if (nsid == 0) {
            throw new NvmeException(device.name() + " has no active namespace — attach one (nvme-cli: create-ns and "
                    + "attach-ns; QEMU: -device nvme-ns)");
        }
        return nsid;
    }

    private IdentifyNamespace identifyNamespace(int nsid) throws VfioException {
        adminCommand(
                "Identify Namespace " + nsid,
                NvmeRegs.ADMIN_IDENTIFY,
                nsid,
                scratch.iova(),
                0,
                NvmeRegs.CNS_NAMESPACE,
                0,
                0);
        try {
            return IdentifyNamespace.parse(nsid, scratch.segment());
        } catch (IllegalArgumentException e) {
            throw new NvmeException(device.name() + ": " + e.getMessage());
        }
    }

    /**
     * Refuses a namespace whose blocks carry metadata or protection information. This driver sends data pointers
     * only: MPTR 0, no PRINFO, and PRP entries for blocks × block size bytes. On a format with metadata the controller
     * moves blocks × (block size + metadata size) bytes when the metadata is interleaved (extended LBA) — past the
     * PRP entries: PRP2 0 sends the excess to IOVA 0, and a buffer that grows from two pages to three makes it read
     * PRP2, a data page, as a PRP list — or it transfers the separate metadata at MPTR, IOVA 0. Supporting metadata
     * is not in this driver's scope.
     */
    static void requireDataOnly(String device, IdentifyNamespace ns) throws NvmeException {
        IdentifyNamespace.LbaFormat f = ns.format();
        if (f.metadataSize() == 0 && ns.protectionType() == 0) {
            return;
        }
        StringBuilder what = new StringBuilder();
        if (f.metadataSize() != 0) {
            what.append(String.format(
                    "%d-byte blocks with %d bytes of metadata each, %s",
                    f.blockSize(),
                    f.metadataSize(),
                    ns.extendedLba()
                            ? "interleaved with the data (extended LBA)"
                            : "in a separate buffer (metadata pointer)"));
        } else {
            what.append(f.blockSize()).append("-byte blocks without metadata");
        }
        if (ns.protectionType() != 0) {
            what.append(String.format(", with end-to-end protection information type %d", ns.protectionType()));
        }
        List<String> plain = new ArrayList<>();
        for (int i = 0; i < ns.formats().size(); i++) {
            IdentifyNamespace.LbaFormat g = ns.formats().get(i);
            if (g.metadataSize() == 0 && g.dataSizeLog2() >= 9 && g.dataSizeLog2() <= 16) {
                plain.add(i + " (" + g.describe() + ")");
            }
        }
        throw new NvmeException(String.format(
                "%s: namespace %d uses LBA format %d: %s (FLBAS bit 4 %d, DPS 0x%x) — this driver transfers data only "
                        + "(no metadata pointer, no protection information) and refuses it; %s, or use the kernel's nvme "
                        + "driver",
                device,
                ns.nsid(),
                ns.formatIndex(),
                what,
                ns.extendedLba() ? 1 : 0,
                ns.dps(),
                plain.isEmpty()
                        ? "the namespace lists no LBA format without metadata"
                        : "format the namespace (it erases it) to one without metadata and protection — "
                                + String.join(", ", plain) + " — e.g. from the kernel's driver with nvme-cli: nvme "
                                + "format /dev/nvmeXnY --lbaf=N --pi=0"));
    }

    // ---- public API ---------------------------------------------------------------------------------------------

    public IdentifyController identity() {
        return identity;
    }

    public IdentifyNamespace namespace() {
        return namespace;
    }

    /** NVMe version from the VS register, e.g. "1.4". */
    public String version() {
        return NvmeRegs.version(bar.read32(NvmeRegs.VS));
    }

    public int blockSize() {
        return namespace.blockSize();
    }

    /** The largest single transfer (MDTS, and one PRP list page). */
    public long maxTransferBytes() {
        return maxTransfer;
    }

    public int ioQueueDepth() {
        return io.depth;
    }

    /** The interrupt completions are signalled by (POLL when none). */
    public IrqMode irqMode() {
        return irqMode;
    }

    public DmaArena arena() {
        return arena;
    }

    /** A zeroed, page-aligned buffer in DMA memory for {@link #read}/{@link #write}. */
    public DmaBuffer allocateBuffer(long bytes) throws VfioException {
        return arena.allocate(round(bytes), PAGE);
    }

    /** Reads {@code blocks} logical blocks at {@code lba} into {@code dst}. */
    public void read(long lba, int blocks, DmaBuffer dst) throws VfioException {
        io(NvmeRegs.NVM_READ, "Read", lba, blocks, dst);
    }

    /** Writes {@code blocks} logical blocks at {@code lba} from {@code src}. */
    public void write(long lba, int blocks, DmaBuffer src) throws VfioException {
        io(NvmeRegs.NVM_WRITE, "Write", lba, blocks, src);
    }

    /** Flush: the controller commits its volatile write cache. */
    public void flush() throws VfioException {
        execute(io, ioWaiter, "Flush", allocate(io, "Flush"), NvmeRegs.NVM_FLUSH, namespace.nsid(), 0, 0, 0, 0, 0);
    }

    private void io(int opcode, String name, long lba, int blocks, DmaBuffer buf) throws VfioException {
        long bytes = checkIo(name, lba, blocks, buf);
        String what = name; // messages add the LBA range from the command itself, only when they are built
        int cid = allocate(io, what);
        DmaBuffer list = prpLists[cid]; // each command identifier owns one PRP list page
        try {
            Prp.build(buf.iova(), bytes, PAGE, list.segment(), list.iova(), prp);
        } catch (IllegalArgumentException e) {
            io.release(cid);
            throw e;
        }
        execute(
                io,
                ioWaiter,
                what,
                cid,
                opcode,
                namespace.nsid(),
                prp[0],
                prp[1],
                (int) lba,
                (int) (lba >>> 32),
                blocks - 1);
    }

    /** Validates a transfer against the namespace and the DMA arena; returns its length in bytes. */
    long checkIo(String name, long lba, int blocks, DmaBuffer buf) {
        if (blocks < 1 || blocks > 65536) {
            throw new IllegalArgumentException(name + ": block count must be 1..65536: " + blocks);
        }
        long bytes = (long) blocks * blockSize();
        if (bytes > maxTransfer) {
            throw new IllegalArgumentException(String.format(
                    "%s of %d bytes exceeds the controller's maximum " + "transfer of %d bytes; split it",
                    name, bytes, maxTransfer));
        }
        if (lba < 0 || lba > namespace.size() - blocks) {
            throw new IllegalArgumentException(String.format(
                    "%s LBA %d+%d lies beyond the namespace's %d blocks", name, lba, blocks, namespace.size()));
        }
        if (buf.size() < bytes || !arena.containsIova(buf.iova(), bytes) || arena.iovaOf(buf.segment()) != buf.iova()) {
            throw new IllegalArgumentException(
                    name + ": the buffer must come from allocateBuffer and hold " + bytes + " bytes");
        }
        return bytes;
    }

    // ---- access for the benchmark and the IOMMU check in this package -------------------------------------------

    QueuePair ioQueue() {
        return io;
    }

    CompletionWaiter ioWaiter() {
        return ioWaiter;
    }

    DmaBuffer prpList(int cid) {
        return prpLists[cid];
    }

    Options options() {
        return options;
    }

    private volatile String quiesceReport = "no I/O queue";

    /** What {@link #close()} found in flight and whether it drained before the controller was disabled. */
    public String quiesceReport() {
        return quiesceReport;
    }

    /** True once {@link #close()} has begun: submit nothing more. */
    boolean quiescing() {
        return quiescing;
    }

    /** From now on every command is refused: the controller is in an unknown state that only a reset clears. */
    void markFailed() {
        failed = true;
    }

    /** Whether {@link #close()} has disabled the controller: commands still in flight will never complete. */
    boolean shutDown() {
        return shutDown;
    }

    /**
     * When the controller was closed under a command without its owner asking (the host took the device back), the
     * error that says so, with {@code cause} (what the command's thread ran into: closed memory, a closed descriptor)
     * attached; otherwise null.
     */
    NvmeException closedError(String what, Throwable cause) {
        String reason = closeReason;
        if (reason == null) {
            return null;
        }
        NvmeException e = new NvmeException(what + " did not complete: the controller was " + reason
                + "; what was in flight may or may not have taken effect — open the controller again once the device "
                + "is back");
        e.initCause(cause);
        return e;
    }

    private static final String RELEASED_ON_REQUEST = "closed and the device released at the host's request (VFIO "
            + "device request: the device is being unbound from vfio-pci or removed)";

    /**
     * The host wants the device back: close the controller (the commands in flight get up to 2 s to complete), then
     * the session, whose device descriptor the kernel's unbind waits for. Runs on the device request's thread.
     */
    private void releaseOnRequest() {
        LOG.log(
                Level.WARNING,
                "{0}: the host asked for the device back (VFIO device request: an unbind from vfio-pci or a removal): "
                        + "shutting the NVMe controller down and releasing the device; its commands fail from now on",
                device.name());
        closeReason = RELEASED_ON_REQUEST;
        close();
        // The controller is disabled, so its DMA memory is unmapped and freed before the device is closed: closing
        // the device lets the kernel's unbind finish, which takes the group out of the container and every mapping
        // with it, and an unmap after that fails (EINVAL), leaving the memory allocated.
        try {
            if (arena != null) {
                arena.close();
            }
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "{0}: releasing the DMA memory: {1}", device.name(), e.getMessage());
        }
        try {
            session.close();
        } catch (RuntimeException e) {
            LOG.log(Level.WARNING, "{0}: closing the VFIO session: {1}", device.name(), e.getMessage());
        }
        LOG.log(
                Level.WARNING,
                "{0}: released at the host''s request ({1}); device, DMA mappings, group and container closed",
                device.name(),
                quiesceReport);
    }

    /**
     * Submits one I/O command with the given data pointers and waits for it, without checking them against the DMA
     * mappings: the way to show the IOMMU stops a device that was told a bad address. Returns the 15-bit status.
     */
    int rawIo(int opcode, long lba, int blocks, long prp1, long prp2) throws VfioException {
        if (closed || failed) {
            throw new NvmeException("the controller is closed or failed");
        }
        int cid = allocate(io, "raw I/O");
        io.submit(cid, opcode, namespace.nsid(), prp1, prp2, (int) lba, (int) (lba >>> 32), blocks - 1, 0, 0, 0);
        awaitCommand(io, ioWaiter, cid, "raw I/O", opcode, (int) lba, (int) (lba >>> 32), blocks - 1);
        return io.lastStatus[cid];
    }

    // ---- shutdown -----------------------------------------------------------------------------------------------

    /**
     * Shuts the controller down (CC.SHN, waiting up to CAP.TO), disables it (which also deletes its I/O queues), turns
     * its interrupts off and unmaps BAR0. Best effort and idempotent: a controller that stopped answering is still
     * disabled and released.
     */
    @Override
    public synchronized void close() {
        if (closed) {
            return;
        }
        // No Delete I/O Queue commands: disabling the controller deletes every I/O queue, and close() may run on a
        // shutdown-hook thread while another thread is in the middle of an admin command.
        //
        // Order: (1) stop new submissions and let the commands in flight complete (bounded), so the controller is
        // never disabled under the device's in-flight DMA and no doorbell is rung on a disabled controller;
        // (2) CC.SHN, wait for CSTS.SHST; (3) CC.EN=0, wait for CSTS.RDY=0 — the device does no more DMA;
        // (4) interrupts off; (5) BAR0 unmapped. The caller then closes the device, unmaps DMA and releases the group.
        quiescing = true;
        try {
            closed = true;
            if (io != null) {
                int before = io.outstandingFromOtherThread();
                long limit = Math.min(options.commandTimeout().toMillis(), QUIESCE_LIMIT_MS);
                awaitIdle(io, limit);
                int after = io.outstandingFromOtherThread();
                quiesceReport = before == 0
                        ? "no I/O in flight"
                        : after == 0
                                ? before + " I/O commands in flight completed first"
                                : after + " of " + before + " I/O commands still in flight after " + limit + " ms";
            }
            if (bar != null && cap != null) {
                try {
                    shutdown();
                } catch (VfioException | RuntimeException e) {
                    // a controller that cannot shut down is still disabled and released below
                }
            }
        } finally {
            closed = true;
            shutDown = true; // a thread still waiting for a command stops waiting
            if (request != null) {
                request.close();
            }
            try {
                if (!eventfds.isEmpty()) {
                    device.disableIrq(irqIndex());
                }
            } catch (VfioException | RuntimeException e) {
                // closing the device descriptor disables interrupts too
            }
            // a thread waiting for an interrupt is woken; its waiter closes its eventfd once that thread has left
            adminWaiter.close();
            ioWaiter.close();
            unownedEventfds.forEach(EventFd::close);
            if (bar != null) {
                bar.close();
            }
        }
    }

    /** Up to this long for the commands in flight to complete at close, even with a long command timeout. */
    private static final long QUIESCE_LIMIT_MS = 2000;

    /** Waits until {@code q} has no command in flight (its owner thread reaps them) or {@code limitMs} passes. */
    private static void awaitIdle(QueuePair q, long limitMs) {
        long deadline = System.nanoTime() + limitMs * 1_000_000;
        while (q.outstandingFromOtherThread() > 0 && System.nanoTime() - deadline < 0) {
            sleepMillis(1);
        }
    }

    private int irqIndex() {
        return switch (irqMode) {
            case MSIX -> 2;
            case MSI -> 1;
            default -> 0;
        };
    }

    private void shutdown() throws VfioException {
        int cc = bar.read32(NvmeRegs.CC);
        if ((cc & NvmeRegs.CC_EN) != 0 && (bar.read32(NvmeRegs.CSTS) & NvmeRegs.CSTS_RDY) != 0) {
            bar.write32(NvmeRegs.CC, (cc & ~NvmeRegs.CC_SHN_MASK) | NvmeRegs.CC_SHN_NORMAL);
            long deadline = System.nanoTime() + Math.max(cap.readyTimeoutMillis(), 500) * 1_000_000;
            while ((bar.read32(NvmeRegs.CSTS) & NvmeRegs.CSTS_SHST_MASK) != NvmeRegs.CSTS_SHST_COMPLETE
                    && System.nanoTime() - deadline < 0) {
                sleepMillis(1);
            }
        }
        disable();
    }

    @Override
    public String toString() {
        return "NVMe controller " + device.name()
                + (identity == null ? "" : " (" + identity.model() + ", serial " + identity.serial() + ")")
                + ", completions by " + ioWaiter;
    }
}
