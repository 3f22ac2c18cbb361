// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import io.iovirt.net.Ethernet;
import io.iovirt.net.Mac;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * The announcement a moved or reconnected guest makes (what QEMU's qemu_announce_self sends): a broadcast RARP
 * "request reverse" (RFC 903) whose sender and target hardware addresses are the guest's, padded to 60 bytes.
 */
final class Rarp {
    static final int ETHERTYPE = 0x8035;
    private static final ValueLayout.OfShort BE16 = JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private Rarp() {}

    static void write(MemorySegment b, long mac) {
        b.asSlice(0, Ethernet.MIN_FRAME).fill((byte) 0);
        Mac.write(b, 0, Mac.BROADCAST);
        Mac.write(b, 6, mac);
        b.set(BE16, 12, (short) ETHERTYPE);
        b.set(BE16, 14, (short) 1); // hardware type: Ethernet
        b.set(BE16, 16, (short) 0x0800); // protocol type: IPv4
        b.set(JAVA_BYTE, 18, (byte) 6);
        b.set(JAVA_BYTE, 19, (byte) 4);
        b.set(BE16, 20, (short) 3); // request reverse
        Mac.write(b, 22, mac); // sender hardware address; sender IP 0
        Mac.write(b, 32, mac); // target hardware address; target IP 0
    }
}
