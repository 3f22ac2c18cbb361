// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.util.Locale;
import java.util.concurrent.ThreadLocalRandom;

/**
 * 48-bit Ethernet addresses held in the low bits of a {@code long} (first octet most significant), so the data path
 * reads, compares and hashes them without objects.
 */
public final class Mac {
    /** Octets in an address. */
    public static final int BYTES = 6;

    public static final long BROADCAST = 0xffff_ffff_ffffL;
    private static final long MULTICAST_BIT = 1L << 40; // I/G bit: least significant bit of the first octet
    private static final long LOCAL_BIT = 1L << 41; // U/L bit
    private static final ValueLayout.OfInt BE_INT = JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
    private static final ValueLayout.OfShort BE_SHORT = JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    private Mac() {}

    /** The address at {@code offset} in {@code frame} (network byte order). */
    public static long read(MemorySegment frame, long offset) {
        long hi = Integer.toUnsignedLong(frame.get(BE_INT, offset));
        long lo = Short.toUnsignedLong(frame.get(BE_SHORT, offset + 4));
        return hi << 16 | lo;
    }

    public static void write(MemorySegment frame, long offset, long mac) {
        frame.set(BE_INT, offset, (int) (mac >>> 16));
        frame.set(BE_SHORT, offset + 4, (short) mac);
    }

    /** Group address (multicast or broadcast): flooded, never learned. */
    public static boolean isMulticast(long mac) {
        return (mac & MULTICAST_BIT) != 0;
    }

    /** A valid station address: not a group address and not all zeros (what a frame's source must be). */
    public static boolean isValidSource(long mac) {
        return !isMulticast(mac) && mac != 0;
    }

    /**
     * Parses {@code aa:bb:cc:dd:ee:ff} (or with '-').
     *
     * @throws IllegalArgumentException when it is not six two-digit hexadecimal octets
     */
    public static long parse(String s) {
        if (s.length() != 17) {
            throw new IllegalArgumentException("not a MAC address (want aa:bb:cc:dd:ee:ff): " + s);
        }
        long v = 0;
        for (int i = 0; i < 6; i++) {
            int hi = Character.digit(s.charAt(3 * i), 16);
            int lo = Character.digit(s.charAt(3 * i + 1), 16);
            if (hi < 0 || lo < 0 || (i < 5 && s.charAt(3 * i + 2) != ':' && s.charAt(3 * i + 2) != '-')) {
                throw new IllegalArgumentException("not a MAC address (want aa:bb:cc:dd:ee:ff): " + s);
            }
            v = v << 8 | hi << 4 | lo;
        }
        return v;
    }

    public static String toString(long mac) {
        return String.format(
                Locale.ROOT,
                "%02x:%02x:%02x:%02x:%02x:%02x",
                mac >>> 40 & 0xff,
                mac >>> 32 & 0xff,
                mac >>> 24 & 0xff,
                mac >>> 16 & 0xff,
                mac >>> 8 & 0xff,
                mac & 0xff);
    }

    /** The six octets, first octet first (virtio-net config space layout). */
    public static byte[] toBytes(long mac) {
        byte[] b = new byte[6];
        for (int i = 0; i < 6; i++) {
            b[i] = (byte) (mac >>> (40 - 8 * i));
        }
        return b;
    }

    /** A random locally administered unicast address. */
    public static long randomLocal() {
        long v = ThreadLocalRandom.current().nextLong() & BROADCAST;
        return (v | LOCAL_BIT) & ~MULTICAST_BIT;
    }
}
