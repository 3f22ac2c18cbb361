// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.pci.Bdf;
import java.util.ArrayList;
import java.util.List;

/** How a VM is told about its assigned devices: QEMU's vfio-pci arguments and libvirt's {@code <hostdev>} elements. */
public final class VfioConfig {
    private VfioConfig() {}

    /** QEMU arguments for one device ({@code -device vfio-pci,host=...,id=...}). */
    public static List<String> qemuArgs(Bdf bdf, int index) {
        return List.of("-device", "vfio-pci,host=" + bdf + ",id=hostdev" + index);
    }

    /** QEMU arguments for all devices, in order. */
    public static List<String> qemuArgs(List<Bdf> devices) {
        List<String> args = new ArrayList<>();
        for (int i = 0; i < devices.size(); i++) {
            args.addAll(qemuArgs(devices.get(i), i));
        }
        return args;
    }

    /**
     * A libvirt {@code <hostdev>} element. {@code managed='no'}: iovirt binds the device to vfio-pci itself, so
     * libvirt must not detach and reattach it behind the registry's back.
     */
    public static String libvirtHostdev(Bdf bdf) {
        return String.format("""
                <hostdev mode='subsystem' type='pci' managed='no'>
                  <driver name='vfio'/>
                  <source>
                    <address domain='0x%04x' bus='0x%02x' slot='0x%02x' function='0x%x'/>
                  </source>
                </hostdev>
                """, bdf.domain(), bdf.bus(), bdf.device(), bdf.function());
    }
}
