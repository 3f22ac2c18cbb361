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
    void charactersThatChangeHowALineReadsAreEscaped() {
        // a right-to-left override would show "disk.qcow2" as "2woqc.ksid"; zero-width, separators, a lone surrogate
        assertEquals("x\\u202edisk\\u200b\\u2028\\ufeff\\ud800y", Printable.of("x\u202edisk\u200b\u2028\ufeff\ud800y"));
        assertEquals("😀", Printable.of("😀")); // a whole pair is text
        assertEquals("a\\ue0041b", Printable.of("a\udb40\udc41b")); // a tag character: hidden text beyond the BMP
    }

    @Test
    void aBackslashCannotForgeAnEscape() {
        assertEquals("a\\\\x0ab", Printable.of("a\\x0ab"));
    }

    @Test
    void aLongTextIsCutAfterItsLimitAndSaysSo() {
        assertEquals("abc...", Printable.of("abcdef", 3));
        assertEquals("abc", Printable.of("abc", 3));
        assertEquals("\\n...", Printable.of("\n\n", 1)); // the limit counts the text's characters, not the escapes
        assertEquals("a...", Printable.of("a😀", 2)); // never half a surrogate pair
    }

    @Test
    void bytesOutsidePrintableAsciiAreEscapedAsBytes() {
        assertEquals("\\x00\\xffok\\n\\u0100", Printable.ofBytes("\u0000\u00ffok\n\u0100", 60));
    }
}
