// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.host.HostConfigException;
import io.iovirt.host.HostPaths;
import io.iovirt.host.assign.Assigning;
import io.iovirt.host.assign.AssignmentRegistry;
import io.iovirt.host.assign.VfioConfig;
import io.iovirt.linux.SocketAccess;
import io.iovirt.nbd.NbdExport;
import io.iovirt.nbd.NbdServer;
import io.iovirt.net.Mac;
import io.iovirt.net.StreamPort;
import io.iovirt.net.Switch;
import io.iovirt.pci.Bdf;
import io.iovirt.pci.PciDevice;
import io.iovirt.pci.PciInventory;
import io.iovirt.pci.PciSysfs;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageLock;
import io.iovirt.storage.Images;
import io.iovirt.vhostuser.VhostUserServer;
import io.iovirt.vm.Accelerator;
import io.iovirt.vm.QemuGuest;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.function.BooleanSupplier;

/**
 * Wires a {@link VmSpec} into one QEMU guest: starts the iovirt backends its devices need (a vhost-user-blk
 * server per PV disk, one NBD server exporting every FV disk to QEMU's emulated AHCI, one switch for all NICs with a vhost-user port per PV NIC and a stream port per emulated NIC),
 * checks and records VFIO and SR-IOV assignments in the host registry, and returns the QEMU arguments and guest
 * modules. Closing the composition stops the backends; assignments stay until {@code iovirt host release}. A
 * composition that fails stops what it started and releases the assignments it made (not those the VM had before).
 * Who may connect to the backends' sockets is a {@link SocketAccess} (owner only by default; QEMU run by libvirt as
 * another user needs its group and uid).
 */
public final class VmComposer implements AutoCloseable {
    /** One line per device, for the user. */
    public record Device(String technique, String description) {}

    private final VmSpec spec;
    private final Path runDir;
    private final HostPaths host;
    private final Accelerator.Decision accel;
    private final SocketAccess access;
    private final List<AutoCloseable> backends = new ArrayList<>();
    /** Devices this composition assigned (not already the VM's): released again if it fails. */
    private final List<Bdf> claimed = new ArrayList<>();

    private final List<String> args = new ArrayList<>();
    private final Set<String> modules = new LinkedHashSet<>();
    private final List<Device> devices = new ArrayList<>();
    private Switch netSwitch;
    private NbdServer nbd;
    /**
     * The images the NBD server exports and their locks ({@link #backends} too): let go of only once no thread of the
     * server can touch them ({@link #close}).
     */
    private final List<AutoCloseable> nbdHeld = new ArrayList<>();
    /**
     * The PV disks' images ({@link #backends} too) and the devices serving them: an image is flushed and closed only
     * once its device has no queue thread left that could touch it ({@link #close}).
     */
    private final Map<DiskImage, BlkDevice> pvDevices = new IdentityHashMap<>();

    private static final System.Logger LOG = System.getLogger(VmComposer.class.getName());

    /**
     * How long {@link #close} waits, after the NBD server's (or a PV disk's server's) own stop, for requests stuck in
     * image I/O.
     */
    static final Duration NBD_QUIESCE = Duration.ofSeconds(5);

    private VmComposer(VmSpec spec, Path runDir, HostPaths host, Accelerator.Decision accel, SocketAccess access) {
        this.accel = accel;
        this.access = access;
        this.spec = spec;
        this.runDir = runDir;
        this.host = host;
    }

    /**
     * Starts the backends and checks the host devices.
     *
     * @throws HostConfigException a VFIO device or VF pool is not ready (with the remedy)
     */
    public static VmComposer compose(VmSpec spec, Path runDir, HostPaths host) throws IOException {
        return compose(spec, runDir, host, Accelerator.system());
    }

    /** As {@link #compose(VmSpec, Path, HostPaths)}, for a guest that will run under {@code accel}. */
    public static VmComposer compose(VmSpec spec, Path runDir, HostPaths host, Accelerator.Decision accel)
            throws IOException {
        return compose(spec, runDir, host, accel, SocketAccess.ownerOnly());
    }

    /** As {@link #compose(VmSpec, Path, HostPaths, Accelerator.Decision)}, the sockets open to {@code access}. */
    public static VmComposer compose(
            VmSpec spec, Path runDir, HostPaths host, Accelerator.Decision accel, SocketAccess access)
            throws IOException {
        VmComposer c = new VmComposer(spec, runDir, host, accel, access);
        try {
            c.wire();
            return c;
        } catch (IOException | RuntimeException e) {
            c.close();
            c.releaseClaims(e);
            throw e;
        }
    }

    /** Gives back what this failed composition assigned, so the VM that never ran does not keep devices. */
    private void releaseClaims(Exception failure) {
        AssignmentRegistry registry = new AssignmentRegistry(host.stateDir());
        for (Bdf bdf : claimed) {
            try {
                registry.release(bdf, spec.name());
            } catch (RuntimeException e) {
                failure.addSuppressed(new HostConfigException(
                        "could not release " + bdf + " after the failure: " + e.getMessage(),
                        "release it by hand: iovirt host release " + bdf,
                        e));
            }
        }
        claimed.clear();
    }

    /** The NBD server behind the FV disks, or null when the VM has none. */
    public NbdServer nbdServer() {
        return nbd;
    }

    private void wire() throws IOException {
        // A guest in auto mode may be booted again under TCG after it started, so only a sure KVM gets MSI-X here.
        boolean kvm = accel.kind() == Accelerator.Kind.KVM && !accel.mayFallBack();
        int d = 0;
        int ahciPort = 0;
        for (VmSpec.Disk disk : spec.disks()) {
            String id = "disk" + d++;
            String ro = disk.readOnly() ? ",readonly=on" : "";
            if (disk.kind() == VmSpec.Kind.PV) {
                Path sock = runDir.resolve(id + ".sock");
                // backing files unconfined (BackingPolicy.UNRESTRICTED, QEMU's behaviour): vm run's user is the
                // operator, who names these images and runs the VM with their own rights, not a tenant's backend
                DiskImage img = Images.open(disk.image(), null, disk.readOnly(), false);
                backends.add(img);
                BlkDevice device = new BlkDevice(sock.toString(), img, 1, serial(id));
                pvDevices.put(img, device);
                backends.add(VhostUserServer.start(sock, device, access)); // closed before the image

                args.addAll(List.of(
                        "-chardev",
                        "socket,id=" + id + ",path=" + QemuGuest.escape(sock.toString()),
                        "-device",
                        "vhost-user-blk-pci,chardev=" + id + ",num-queues=1"));
                modules.addAll(List.of("virtio_pci", "virtio_blk"));
                devices.add(new Device(
                        "PV",
                        "virtio-blk " + disk.image() + " (" + img.format()
                                + ") served by iovirt over vhost-user (MSI-X via eventfds)"));
            } else {
                // QEMU emulates the controller (AHCI or NVMe) and the disk; the blocks come from iovirt's storage
                // over NBD, so both paths run through the same image code (qcow2, flush semantics, locking).
                Path sock = runDir.resolve("nbd.sock");
                if (nbd == null) {
                    nbd = NbdServer.startUnix(sock, NbdServer.DEFAULT_MAX_CONNECTIONS, access);
                    backends.add(nbd); // close() stops it before any image it exports is closed
                }
                // As a daemon's or serve nbd's export: the image lock for the VM's life (exclusive, or shared for a
                // read-only disk), so QEMU or another export cannot write it under the guest — QEMU's NBD client
                // takes no lock on the file. A PV disk's lock is taken by its device when the frontend starts it.
                ImageLock lock = ImageLock.holdForExport(disk.image(), disk.readOnly(), "vm " + spec.name() + " " + id);
                if (lock != null) {
                    backends.add(lock); // closed after the image (backends close in reverse)
                    nbdHeld.add(lock);
                }
                DiskImage img = Images.open(disk.image(), null, disk.readOnly(), false);
                backends.add(img);
                nbdHeld.add(img);
                nbd.addExport(new NbdExport(id, img, disk.readOnly()));
                args.addAll(List.of(
                        "-drive",
                        "driver=nbd,server.type=unix,server.path=" + QemuGuest.escape(sock.toString()) + ",export=" + id
                                + ",if=none,id=" + id + ",cache.direct=off" + ro));
                if (disk.bus() == VmSpec.Bus.NVME) {
                    // one NVMe controller per disk, its namespace 1 on the drive; the serial is the controller's
                    // identity (required by QEMU's nvme device)
                    args.addAll(List.of("-device", "nvme,drive=" + id + ",serial=" + serial(id)));
                    modules.add("nvme");
                    devices.add(new Device(
                            "FV",
                            "NVMe disk " + disk.image() + " (" + img.format()
                                    + ") emulated by QEMU, its blocks served by iovirt over NBD"));
                } else {
                    if (ahciPort == VmSpec.AHCI_PORTS) { // VmSpec refuses more; kept for the message
                        throw new IllegalArgumentException(
                                "disk " + disk.image() + ": QEMU's AHCI controller has 6 ports,"
                                        + " all taken by earlier fv disks; put this one on NVMe (fv:IMAGE,bus=nvme)");
                    }
                    if (!modules.contains("ahci")) {
                        args.addAll(List.of("-device", "ahci,id=ahci0"));
                        modules.addAll(List.of("ahci", "sd_mod"));
                    }
                    args.addAll(List.of("-device", "ide-hd,drive=" + id + ",bus=ahci0." + ahciPort++));
                    devices.add(new Device(
                            "FV",
                            "AHCI disk " + disk.image() + " (" + img.format()
                                    + ") emulated by QEMU, its blocks served by iovirt over NBD"));
                }
            }
        }
        int n = 0;
        for (VmSpec.Nic nic : spec.nics()) {
            String id = "nic" + n++;
            Path sock = runDir.resolve(id + ".sock");
            long mac = nic.mac() >= 0 ? nic.mac() : Mac.randomLocal();
            if (netSwitch == null) {
                netSwitch = new Switch(Switch.Config.defaults());
                backends.add(netSwitch);
                netSwitch.startHousekeeping();
            }
            if (nic.kind() == VmSpec.Kind.PV) {
                netSwitch.addPort(new VirtioNetPort(VirtioNetPort.Options.defaults(sock, 1, mac)).withAccess(access));
                // vectors=0 under TCG: QEMU 7.2 segfaults in vhost_net_start when vhost-user-net uses MSI-X
                args.addAll(List.of(
                        "-chardev",
                        "socket,id=" + id + ",path=" + QemuGuest.escape(sock.toString()),
                        "-netdev",
                        "vhost-user,id=" + id + ",chardev=" + id,
                        "-device",
                        "virtio-net-pci,netdev=" + id + ",mac=" + Mac.toString(mac) + (kvm ? "" : ",vectors=0")
                                + ",romfile="));
                modules.addAll(List.of("virtio_pci", "virtio_net"));
                devices.add(new Device(
                        "PV",
                        "virtio-net " + Mac.toString(mac) + " on the iovirt switch (vhost-user"
                                + (kvm ? ", MSI-X" : ", INTx: QEMU 7.2 TCG cannot do MSI-X here") + ")"));
            } else {
                netSwitch.addPort(new StreamPort(sock, access));
                args.addAll(List.of(
                        "-netdev",
                        "stream,id=" + id + ",server=off,addr.type=unix,addr.path=" + QemuGuest.escape(sock.toString()),
                        "-device",
                        "e1000,netdev=" + id + ",mac=" + Mac.toString(mac) + ",romfile="));
                modules.add("e1000");
                devices.add(new Device(
                        "FV", "e1000 " + Mac.toString(mac) + " emulated by QEMU, on the iovirt switch (stream)"));
            }
        }
        List<Bdf> passthrough = new ArrayList<>();
        for (String text : spec.vfio()) {
            Bdf bdf = Bdf.parse(text);
            claim(bdf);
            passthrough.add(bdf);
            devices.add(new Device("VFIO", bdf + " passed through (vfio-pci, IOMMU-protected)"));
        }
        for (String pfText : spec.vfPools()) {
            Bdf vf = claimFreeVf(Bdf.parse(pfText));
            passthrough.add(vf);
            devices.add(new Device("SR-IOV", "virtual function " + vf + " of " + pfText + " passed through"));
        }
        if (!passthrough.isEmpty()) {
            args.addAll(VfioConfig.qemuArgs(passthrough));
        }
    }

    /** GET_ID: the VM name and disk index, cut to virtio-blk's 20 bytes keeping the index. */
    private String serial(String diskId) {
        String s = spec.name().replaceAll("[^A-Za-z0-9._-]", "_") + "-" + diskId;
        return s.length() <= 20 ? s : s.substring(s.length() - 20);
    }

    /**
     * The device must be on vfio-pci and end up assigned to this VM in the registry (exclusive). One the VM owns
     * already must still be there: a VF destroyed since (its PF's VFs removed, its PF unbound) or an unplugged device
     * keeps its row until released, and QEMU would fail later without saying why.
     */
    private void claim(Bdf bdf) {
        AssignmentRegistry registry = new AssignmentRegistry(host.stateDir());
        AssignmentRegistry.Assignment owner = registry.owner(bdf);
        if (owner != null && owner.vm().equals(spec.name())) {
            Assigning.requirePresent(new PciSysfs(host.sys()), bdf, spec.name());
            return;
        }
        if (owner != null) {
            throw new HostConfigException(
                    bdf + " is assigned to VM " + owner.vm(),
                    "release it first: iovirt host release " + bdf + " (one device, one VM)");
        }
        if (Assigning.assign(host, bdf, spec.name(), false).created()) {
            claimed.add(bdf);
        }
    }

    private Bdf claimFreeVf(Bdf pf) {
        PciInventory inv = PciInventory.scan(host.sys());
        PciDevice dev = inv.require(pf);
        if (dev.sriov() == null || dev.sriov().vfs().isEmpty()) {
            throw new HostConfigException(
                    pf + " has no virtual functions",
                    "create some: iovirt host vfs " + pf + " --count N, then bind them: iovirt host bind VF");
        }
        AssignmentRegistry registry = new AssignmentRegistry(host.stateDir());
        List<String> why = new ArrayList<>();
        for (Bdf vf : dev.sriov().vfs()) {
            AssignmentRegistry.Assignment owner = registry.owner(vf);
            PciDevice v = inv.device(vf);
            if (owner != null && owner.vm().equals(spec.name())) {
                return vf;
            }
            if (owner != null) {
                why.add(vf + " belongs to " + owner.vm());
            } else if (v == null || !PciDevice.isVfioDriver(v.driver())) {
                why.add(vf + " is " + (v == null || v.driver() == null ? "unbound" : "on " + v.driver()));
            } else {
                try {
                    claim(vf);
                    return vf;
                } catch (RuntimeException e) {
                    why.add(vf + ": " + e.getMessage()); // lost a race to another VM: try the next one
                }
            }
        }
        throw new HostConfigException(
                "no free virtual function of " + pf + " (" + String.join("; ", why) + ")",
                "bind one to vfio-pci (iovirt host bind VF), release one, or create more (iovirt host vfs " + pf
                        + " --count N)");
    }

    /** QEMU arguments for the devices (after the machine, memory and boot arguments). */
    public List<String> qemuArgs() {
        return List.copyOf(args);
    }

    /** Guest kernel modules the devices need. */
    public List<String> modules() {
        return List.copyOf(modules);
    }

    public List<Device> devices() {
        return List.copyOf(devices);
    }

    /** The switch the NICs are on, or null. */
    public Switch netSwitch() {
        return netSwitch;
    }

    /**
     * Stops the backends. The NBD server goes first and in the order {@code serve nbd} exits in: it stops accepting,
     * its requests in flight are served and answered (later ones get ESHUTDOWN) and QEMU's clients are disconnected
     * ({@link NbdServer#close}); once no thread of it can touch an image ({@link NbdServer#awaitQuiescent}, at most
     * {@link #NBD_QUIESCE} more), each exported image is flushed — a write QEMU was told had succeeded is then on
     * disk, not only in the page cache — and closed, then its lock let go of. A request still stuck in image I/O (a
     * hung NFS or FUSE file, a dying disk) keeps its image open and locked until the process exits: closed under it,
     * the descriptor's number could be reused by another open and take that request's writes. A PV disk's image goes
     * the same way after its vhost-user server has stopped ({@link #closePvImage}).
     */
    @Override
    public void close() {
        boolean nbdQuiet = true;
        if (nbd != null) {
            nbd.close(); // disconnects QEMU's NBD clients before the images they use are flushed and closed
            nbdQuiet = awaitQuiescent(nbd::awaitQuiescent, nbd::quiescent);
            if (!nbdQuiet) {
                LOG.log(
                        System.Logger.Level.ERROR,
                        "vm " + spec.name() + ": a request of QEMU's NBD client is still in I/O on an FV disk's image"
                                + " (its file system or disk does not answer): the FV disks' images stay open,"
                                + " unflushed and locked until this process exits; make that file system or disk"
                                + " answer again before the images are used again");
            }
        }
        for (int i = backends.size() - 1; i >= 0; i--) {
            AutoCloseable b = backends.get(i);
            boolean exported = nbdHeld.contains(b);
            if (exported && !nbdQuiet) {
                continue; // a thread of the NBD server may still use it
            }
            if (b instanceof DiskImage img && pvDevices.containsKey(img)) {
                closePvImage(img, pvDevices.get(img)); // its server, after it in backends, has stopped
                continue;
            }
            try {
                if (exported && b instanceof DiskImage img) {
                    img.flushAndClose("vm " + spec.name() + " FV disk " + img.path());
                } else {
                    b.close();
                }
            } catch (Exception e) {
                // stopping a backend at teardown: nothing left to do with the error
            }
        }
        backends.clear();
        nbdHeld.clear();
        pvDevices.clear();
    }

    /** Waits at most a timeout until no thread of a stopped server can touch its images; whether none can. */
    private interface QuiescentWait {
        boolean await(Duration timeout) throws InterruptedException;
    }

    /**
     * Whether no thread of a stopped server (the NBD server, a PV disk's device) can touch its images, once {@code
     * wait} has waited at most {@link #NBD_QUIESCE}; interrupted, what {@code now} says at once, and the interrupt
     * is kept for the caller.
     */
    private static boolean awaitQuiescent(QuiescentWait wait, BooleanSupplier now) {
        try {
            return wait.await(NBD_QUIESCE);
        } catch (InterruptedException e) {
            boolean quiet = now.getAsBoolean();
            Thread.currentThread().interrupt();
            return quiet;
        }
    }

    /**
     * A PV disk's image once its vhost-user server has stopped: flushed — a write the guest was told had completed
     * is then on disk, not only in the page cache — and closed, then the device lets go of its image lock; but only
     * once no queue thread of the device can touch the image ({@link BlkDevice#awaitQuiescent}, at most
     * {@link #NBD_QUIESCE}). A request stuck in image I/O keeps the image open and locked until the process exits, as
     * an FV disk's does.
     */
    private void closePvImage(DiskImage img, BlkDevice device) {
        if (!awaitQuiescent(device::awaitQuiescent, device::quiescent)) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    "vm " + spec.name() + ": a request of the guest is still in I/O on the PV disk's image "
                            + img.path()
                            + " (its file system or disk does not answer): the image stays open, unflushed and locked"
                            + " until this process exits; make that file system or disk answer again before the image"
                            + " is used again");
            return;
        }
        try {
            img.flushAndClose("vm " + spec.name() + " PV disk " + img.path());
        } finally {
            device.close(); // its image lock, taken when the frontend started it
        }
    }
}
