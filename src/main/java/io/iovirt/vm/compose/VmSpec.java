// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.compose;

import java.nio.file.Path;
import java.util.List;
import java.util.Objects;

/**
 * What a VM should get, technique by technique: disks and NICs either emulated by QEMU (FV) or served by iovirt
 * over vhost-user (PV), host devices by VFIO, and SR-IOV virtual functions picked from a physical function's pool.
 *
 * @param profile  {@link Profile#HVM}: only emulated devices; {@link Profile#PVHVM}: any mix (PV devices with
 *                 MSI-X through eventfds and EVENT_IDX; kvmclock under KVM)
 * @param vfio     host devices (already bound to vfio-pci) to pass through
 * @param vfPools  physical functions: one free virtual function of each is assigned to this VM
 */
public record VmSpec(
        String name,
        Profile profile,
        int memoryMiB,
        int cpus,
        List<Disk> disks,
        List<Nic> nics,
        List<String> vfio,
        List<String> vfPools) {
    /** The least guest memory: what {@link io.iovirt.vm.QemuGuest} boots its guest with. */
    public static final int MIN_MEMORY_MIB = io.iovirt.vm.QemuGuest.MIN_MEMORY_MIB;
    /** Ports of the one AHCI controller the emulated SATA disks share. */
    public static final int AHCI_PORTS = 6;

    public enum Profile {
        HVM,
        PVHVM
    }

    public enum Kind {
        FV,
        PV
    }

    /** The controller QEMU emulates for an FV disk. */
    public enum Bus {
        AHCI,
        NVME
    }

    /**
     * @param bus for {@link Kind#FV}: the emulated controller (a SATA disk on AHCI, or an NVMe controller with one
     *            namespace); a PV disk is always virtio-blk and takes only {@link Bus#AHCI}, the default
     */
    public record Disk(Kind kind, Path image, boolean readOnly, Bus bus) {
        public Disk {
            Objects.requireNonNull(image, "image");
            Objects.requireNonNull(bus, "bus");
            if (kind == Kind.PV && bus != Bus.AHCI) {
                throw new IllegalArgumentException("disk " + image + ": bus="
                        + bus.name().toLowerCase(java.util.Locale.ROOT)
                        + " is an emulated controller, a pv disk is virtio-blk (use fv:" + image + ",bus=nvme)");
            }
            if (kind == Kind.FV && bus == Bus.AHCI && readOnly) {
                // measured: QEMU 7.2 refuses it at start ("-device ide-hd: Block node is read-only")
                throw new IllegalArgumentException("disk " + image + ": QEMU's emulated SATA disk (ide-hd) cannot be"
                        + " read-only; use fv:" + image + ",ro,bus=nvme, or pv:" + image + ",ro");
            }
        }

        public Disk(Kind kind, Path image, boolean readOnly) {
            this(kind, image, readOnly, Bus.AHCI);
        }
    }

    /** @param mac the guest's MAC, or -1 for a random locally administered one */
    public record Nic(Kind kind, long mac) {
        public Nic {
            // the switch drops every frame whose source is a group or zero address: such a NIC would be dead
            if (mac != -1 && (mac < 0 || mac > io.iovirt.net.Mac.BROADCAST || !io.iovirt.net.Mac.isValidSource(mac))) {
                throw new IllegalArgumentException("mac " + io.iovirt.net.Mac.toString(mac) + " is a group (multicast)"
                        + " or zero address, and the switch drops every frame a NIC sends from one: give a unicast"
                        + " address (first octet even), e.g. 52:54:00:12:34:56, or leave mac= out for a random one");
            }
        }
    }

    public VmSpec {
        Objects.requireNonNull(name, "name");
        disks = List.copyOf(disks);
        nics = List.copyOf(nics);
        vfio = List.copyOf(vfio);
        vfPools = List.copyOf(vfPools);
        // Everything a composition can refuse is checked here, before it starts backends or assigns devices.
        if (memoryMiB < MIN_MEMORY_MIB || memoryMiB > 1 << 20) {
            // the floor is the guest's (QemuGuest): 64..127 used to pass here, after backends started and devices
            // were assigned, and fail there
            throw new IllegalArgumentException(
                    "memory must be " + MIN_MEMORY_MIB + " MiB .. 1 TiB, got " + memoryMiB + " MiB");
        }
        if (cpus < 1 || cpus > 64) {
            throw new IllegalArgumentException("cpus must be 1..64, got " + cpus);
        }
        for (String text : vfio) {
            io.iovirt.pci.Bdf.parse(text); // a typo refused now, not after the disks' backends started
        }
        for (String text : vfPools) {
            io.iovirt.pci.Bdf.parse(text);
        }
        long ahci = disks.stream()
                .filter(d -> d.kind() == Kind.FV && d.bus() == Bus.AHCI)
                .count();
        if (ahci > AHCI_PORTS) {
            throw new IllegalArgumentException(ahci + " fv disks on AHCI, but QEMU's AHCI controller has " + AHCI_PORTS
                    + " ports; put the others on NVMe (fv:IMAGE,bus=nvme)");
        }
        if (profile == Profile.HVM) {
            for (Disk d : disks) {
                if (d.kind() == Kind.PV) {
                    throw new IllegalArgumentException("profile hvm has only emulated devices: disk " + d.image()
                            + " is pv (use fv:" + d.image() + ", or --profile pvhvm)");
                }
            }
            for (Nic n : nics) {
                if (n.kind() == Kind.PV) {
                    throw new IllegalArgumentException(
                            "profile hvm has only emulated devices: use --nic fv, or --profile pvhvm");
                }
            }
        }
    }
}
