// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.util.Arrays;

/** A snapshot of one port's counters (the sum of its writers' blocks at one moment). */
public final class PortStats {
    private final String port;
    private final long[] values;

    PortStats(String port, long[] values) {
        this.port = port;
        this.values = values.clone();
    }

    public String port() {
        return port;
    }

    public long get(PortStat stat) {
        return values[stat.ordinal()];
    }

    public long rxPackets() {
        return get(PortStat.RX_PACKETS);
    }

    public long rxBytes() {
        return get(PortStat.RX_BYTES);
    }

    public long txPackets() {
        return get(PortStat.TX_PACKETS);
    }

    public long txBytes() {
        return get(PortStat.TX_BYTES);
    }

    /** All receive-side drops. */
    public long rxDropped() {
        return sum(true);
    }

    /** All transmit-side drops. */
    public long txDropped() {
        return sum(false);
    }

    private long sum(boolean rx) {
        long s = 0;
        for (PortStat st : PortStat.ALL) {
            if (st.isDrop() && st.isRx() == rx) {
                s += values[st.ordinal()];
            }
        }
        return s;
    }

    /** One line: the totals, then every non-zero drop or detail counter. */
    @Override
    public String toString() {
        StringBuilder b = new StringBuilder(port)
                .append(": rx ")
                .append(rxPackets())
                .append(" pkts/")
                .append(rxBytes())
                .append(" B, tx ")
                .append(txPackets())
                .append(" pkts/")
                .append(txBytes())
                .append(" B");
        for (PortStat st : PortStat.ALL) {
            switch (st) {
                case RX_PACKETS, RX_BYTES, TX_PACKETS, TX_BYTES -> {}
                default -> {
                    if (values[st.ordinal()] != 0) {
                        b.append(", ").append(st.label()).append(' ').append(values[st.ordinal()]);
                    }
                }
            }
        }
        return b.toString();
    }

    @Override
    public boolean equals(Object o) {
        return o instanceof PortStats p && p.port.equals(port) && Arrays.equals(p.values, values);
    }

    @Override
    public int hashCode() {
        return port.hashCode() * 31 + Arrays.hashCode(values);
    }
}
