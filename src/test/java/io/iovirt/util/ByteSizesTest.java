// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class ByteSizesTest {
    @Test
    void binaryIsExact() {
        assertEquals("0", ByteSizes.binary(0));
        assertEquals("4K", ByteSizes.binary(4096));
        assertEquals("2M", ByteSizes.binary(2 << 20));
        assertEquals("1536", ByteSizes.binary(1536));
        assertEquals("3K", ByteSizes.binary(3072));
        assertEquals("8E", ByteSizes.binary(Long.MIN_VALUE)); // 2^63 as unsigned: a 64-bit BAR's size
    }

    @Test
    void humanUsesTheLargestUnitWithOneDecimalWhenInexact() {
        assertEquals("1000 bytes", ByteSizes.human(1000));
        assertEquals("1 byte", ByteSizes.human(1));
        assertEquals("1 KiB", ByteSizes.human(1024));
        assertEquals("64 MiB", ByteSizes.human(64L << 20));
        assertEquals("1.5 GiB", ByteSizes.human(3L << 29));
        assertEquals("4 GiB", ByteSizes.human(4L << 30));
    }

    @Test
    void parseAcceptsBinaryUnitsAndRefusesTheRest() {
        assertEquals(4L << 30, ByteSizes.parse("4G"));
        assertEquals(4L << 30, ByteSizes.parse("4GiB"));
        assertEquals(512L << 20, ByteSizes.parse(" 512m "));
        assertEquals(1073741824L, ByteSizes.parse("1073741824"));
        for (String bad : new String[] {"", "G", "-1M", "1.5G", "99999999999E", "4X", "\u001b[31m"}) {
            ActionableException e = assertThrows(ActionableException.class, () -> ByteSizes.parse(bad), bad);
            assertTrue(
                    e.getMessage().contains("is not a size") && !e.getMessage().contains("\u001b"), e.getMessage());
        }
    }
}
