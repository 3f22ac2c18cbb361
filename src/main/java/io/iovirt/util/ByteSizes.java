package io.iovirt.util;

/** Byte counts for humans: powers of two as "4K", "2M"; other sizes in the largest unit that divides them. */
public final class ByteSizes {
    private static final String[] SUFFIX = {"", "K", "M", "G", "T", "P", "E"};

    private ByteSizes() {
    }

    public static String binary(long bytes) {
        if (bytes == 0) {
            return "0";
        }
        int unit = 0;
        long v = bytes;
        while (unit < SUFFIX.length - 1 && v % 1024 == 0) {
            v /= 1024;
            unit++;
        }
        return Long.toUnsignedString(v) + SUFFIX[unit];
    }
}
