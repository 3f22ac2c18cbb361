// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

/** Ethernet II frame layout as the switch sees it (no preamble, no FCS: what TAP, QEMU and virtio-net carry). */
public final class Ethernet {
    /** Destination MAC, source MAC, EtherType. A frame shorter than this is a runt. */
    public static final int HEADER = 14;
    /** One 802.1Q tag, allowed on top of the MTU. */
    public static final int VLAN_TAG = 4;
    /** The minimum frame without FCS on the wire; virtual NICs may send shorter ones (virtio-net does not pad). */
    public static final int MIN_FRAME = 60;

    public static final int DEFAULT_MTU = 1500;
    /** The largest MTU a port accepts: frames then fit QEMU's 64 KiB network packet limit. */
    public static final int MAX_MTU = 65535 - HEADER - VLAN_TAG;

    public static final int MIN_MTU = 68;

    private Ethernet() {}

    /** The largest frame a switch with {@code mtu} forwards. */
    public static int maxFrame(int mtu) {
        return mtu + HEADER + VLAN_TAG;
    }
}
