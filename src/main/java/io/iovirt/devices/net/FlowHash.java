// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import io.iovirt.net.Frame;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Picks a receive queue for a frame when the guest has several: the same flow (addresses, and for IPv4 TCP/UDP the
 * ports) always lands on the same queue, so a flow's frames stay in order.
 */
final class FlowHash {
    private static final ValueLayout.OfShort BE16 = JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private FlowHash() {}

    static int of(Frame f) {
        MemorySegment b = f.buffer();
        long o = f.offset();
        int len = f.length();
        long h = f.destination() * 31 + f.source();
        if (len >= 34 && Short.toUnsignedInt(b.get(BE16, o + 12)) == 0x0800) {
            int ihl = (b.get(JAVA_BYTE, o + 14) & 0xf) * 4;
            int proto = b.get(JAVA_BYTE, o + 23) & 0xff;
            h = h * 31 + b.get(JAVA_INT_UNALIGNED, o + 26);
            h = h * 31 + b.get(JAVA_INT_UNALIGNED, o + 30);
            if ((proto == 6 || proto == 17) && ihl >= 20 && len >= 14 + ihl + 4) {
                h = h * 31 + b.get(JAVA_INT_UNALIGNED, o + 14 + ihl);
            }
        }
        h *= 0x9E37_79B9_7F4A_7C15L;
        return (int) (h >>> 33);
    }
}
