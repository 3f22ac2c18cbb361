// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;

/**
 * One writer's share of a port's counters. Each receive thread and each transmit lock has its own block, so counting
 * is a plain add published with an opaque store: no atomic read-modify-write, no cache line shared between writers
 * (blocks are padded). Readers sum the blocks of a port ({@link Port#stats()}); a sum read while frames flow is a
 * moment's view, exact once traffic stops.
 */
public final class Counters {
    private static final VarHandle SLOT = MethodHandles.arrayElementVarHandle(long[].class);
    /** 64 bytes of padding on each side keep neighbouring blocks' hot slots off this block's cache lines. */
    private static final int PAD = 8;

    private final long[] slots = new long[PAD + PortStat.ALL.length + PAD];

    Counters() {}

    /**
     * A block that belongs to no port: for frames a port originates itself (a RARP announcement on a guest's
     * behalf), which must not show up as received from the peer.
     */
    public static Counters detached() {
        return new Counters();
    }

    /** Adds {@code n} to {@code stat}. Only this block's single writer may call it. */
    public void add(PortStat stat, long n) {
        int i = PAD + stat.ordinal();
        SLOT.setOpaque(slots, i, (long) SLOT.getOpaque(slots, i) + n);
    }

    public void increment(PortStat stat) {
        add(stat, 1);
    }

    /** Counts one frame of {@code bytes} as received (into the switch). */
    public void rx(long bytes) {
        add(PortStat.RX_PACKETS, 1);
        add(PortStat.RX_BYTES, bytes);
    }

    /** Counts one frame of {@code bytes} as sent to the peer. */
    public void tx(long bytes) {
        add(PortStat.TX_PACKETS, 1);
        add(PortStat.TX_BYTES, bytes);
    }

    public long get(PortStat stat) {
        return (long) SLOT.getOpaque(slots, PAD + stat.ordinal());
    }

    void addTo(long[] sums) {
        for (int i = 0; i < sums.length; i++) {
            sums[i] += (long) SLOT.getOpaque(slots, PAD + i);
        }
    }
}
