// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

/**
 * What a port counts. "rx" is from the port's peer into the switch, "tx" is from the switch out to the peer (the
 * peer's own counters are mirrored: a guest's tx_packets is its port's rx_packets). Dropped frames are counted once,
 * under the reason, and not in the packet/byte totals.
 */
public enum PortStat {
    /** Valid frames taken into the switch. */
    RX_PACKETS("rx_packets", false),
    RX_BYTES("rx_bytes", false),
    /** Of {@link #RX_PACKETS}: group-addressed (broadcast or multicast) frames. */
    RX_MULTICAST("rx_multicast", false),
    /** Of {@link #RX_PACKETS}: frames flooded because the destination is a group or unknown. */
    RX_FLOODED("rx_flooded", false),
    /** Of {@link #RX_PACKETS}: frames whose destination was learned on the port they came from (no hairpin). */
    RX_FILTERED("rx_filtered", false),
    /**
     * Of {@link #RX_PACKETS}: frames whose source address was not learned because the port already holds its share
     * of the MAC table ({@code macsPerPort}) or the table is full. They are still forwarded (flooded when the
     * destination is unknown); only replies to the unlearned address are flooded too.
     */
    RX_UNLEARNED("rx_unlearned", false),
    /** Shorter than an Ethernet header. */
    RX_DROPPED_RUNT("rx_dropped_runt", true),
    /** Longer than the switch MTU plus Ethernet and VLAN headers. */
    RX_DROPPED_OVERSIZE("rx_dropped_oversize", true),
    /** Source address is a group address or zero. */
    RX_DROPPED_BAD_SOURCE("rx_dropped_bad_source", true),
    /**
     * The transport's own framing was broken: a request shorter than its virtio-net header, a bogus stream length
     * prefix.
     */
    RX_DROPPED_MALFORMED("rx_dropped_malformed", true),
    /** Frames delivered to the peer. */
    TX_PACKETS("tx_packets", false),
    TX_BYTES("tx_bytes", false),
    /** The peer had no room: no guest receive buffers, a full socket or TAP queue. */
    TX_DROPPED_NO_BUFFERS("tx_dropped_no_buffers", true),
    /** The peer's receive buffers were too small for the frame. */
    TX_DROPPED_BUFFER_TOO_SMALL("tx_dropped_buffer_too_small", true),
    /**
     * Longer than the peer takes: a guest whose MTU (VIRTIO_NET_F_MTU, the frontend's NET_SET_MTU) is below the
     * switch's gets no frame longer than that MTU plus Ethernet and VLAN headers (VIRTIO 1.2 §5.1.4.2).
     */
    TX_DROPPED_OVERSIZE("tx_dropped_oversize", true),
    /** No peer is connected (or its link is down). */
    TX_DROPPED_LINK_DOWN("tx_dropped_link_down", true),
    /** The transport failed while sending (a write error, a broken guest queue). */
    TX_DROPPED_ERROR("tx_dropped_error", true);

    private final String label;
    private final boolean drop;

    PortStat(String label, boolean drop) {
        this.label = label;
        this.drop = drop;
    }

    /** The name in printed statistics, e.g. {@code rx_dropped_runt}. */
    public String label() {
        return label;
    }

    public boolean isDrop() {
        return drop;
    }

    public boolean isRx() {
        return label.startsWith("rx_");
    }

    static final PortStat[] ALL = values();
}
