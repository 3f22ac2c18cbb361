// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import io.iovirt.net.Mac;
import java.nio.ByteBuffer;

/** Ethernet frames for tests, one copy for every package (switch, ports, virtio-net). */
public final class Frames {
    private Frames() {}

    /** An Ethernet II frame of {@code length} bytes (header included) with a recognizable payload. */
    public static byte[] ethernet(long dst, long src, int length) {
        ByteBuffer b = ByteBuffer.allocate(length);
        byte[] d = Mac.toBytes(dst);
        byte[] s = Mac.toBytes(src);
        b.put(d, 0, Math.min(6, length));
        if (length > 6) {
            b.put(s, 0, Math.min(6, length - 6));
        }
        if (length >= 14) {
            b.putShort((short) 0x88b5); // IEEE local experimental EtherType
            for (int i = 14; i < length; i++) {
                b.put((byte) (i * 7 + src));
            }
        }
        return b.array();
    }

    public static byte[] ethernet(String dst, String src, int length) {
        return ethernet(Mac.parse(dst), Mac.parse(src), length);
    }
}
