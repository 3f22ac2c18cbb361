// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

class PrintableTest {
    @Test
    void controlCharactersAreEscapedAndOtherTextKept() {
        assertEquals("a\\nb\\x1b[2Jc\\x7f\\x85/srv/bäse", Printable.of("a\nb\u001b[2Jc\u007f\u0085/srv/bäse"));
    }

    @Test
    void aLongTextIsCutAfterItsLimitAndSaysSo() {
        assertEquals("abc...", Printable.of("abcdef", 3));
        assertEquals("abc", Printable.of("abc", 3));
        assertEquals("\\n...", Printable.of("\n\n", 1)); // the limit counts the text's characters, not the escapes
    }

    @Test
    void bytesOutsidePrintableAsciiAreEscapedAsBytes() {
        assertEquals("\\x00\\xffok\\n", Printable.ofBytes("\u0000\u00ffok\n", 60));
    }
}
