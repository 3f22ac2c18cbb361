// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import java.nio.ByteBuffer;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The message of a structured error reply is cut to {@link NbdConnection#MAX_ERROR_MESSAGE} bytes at a character
 * boundary: the protocol's strings MUST be UTF-8, and a message made from an image error (which names paths, in any
 * language) was cut at byte 1024 even inside a multi-byte character.
 */
class NbdErrorMessageTest {
    @TempDir
    Path dir;

    @Test
    void aLongNonAsciiErrorMessageIsCutAtACharacterBoundary() throws Exception {
        Path img = dir.resolve("e.raw");
        Files.write(img, new byte[1 << 20]);
        String failure = "€".repeat(600); // 1800 bytes
        // "block status 0+4096: " is 21 bytes: byte 1024 is the second of the 335th "€"
        String sent = "block status 0+4096: " + "€".repeat(334);
        try (DiskImage real = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(dir.resolve("e.sock"), 4)) {
            GatedImage image = new GatedImage(real);
            image.extentFailure = failure;
            s.addExport(new NbdExport("e", image, false));
            try (RawClient c = RawClient.unix(dir.resolve("e.sock"))) {
                c.structuredReplies();
                c.baseAllocation("e");
                c.go("e");
                long cookie = c.send(Nbd.CMD_BLOCK_STATUS, 0, 0, 4096, null);
                ByteBuffer h = c.read(20);
                assertEquals(Nbd.STRUCTURED_REPLY_MAGIC, h.getInt());
                assertEquals(Nbd.REPLY_FLAG_DONE, h.getShort());
                assertEquals(Nbd.REPLY_TYPE_ERROR, Short.toUnsignedInt(h.getShort()));
                assertEquals(cookie, h.getLong());
                ByteBuffer p = c.read(h.getInt());
                assertEquals(Nbd.EIO, p.getInt());
                int n = Short.toUnsignedInt(p.getShort());
                assertEquals(p.remaining(), n, "the message fills the chunk");
                assertTrue(n <= NbdConnection.MAX_ERROR_MESSAGE, n + " bytes");
                String message = StandardCharsets.UTF_8
                        .newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(p)
                        .toString(); // throws MalformedInputException on a cut inside a character
                assertEquals(sent, message);
            }
        }
    }

    /**
     * An option's error message quoting what the client sent stays within the protocol's 4096 bytes, whole
     * characters: a GO for an unknown export named with 4096 bytes (the longest name the protocol allows) was
     * answered with its name and the words around it, 4142 bytes.
     */
    @Test
    void anOptionErrorQuotingALongExportNameStaysWithinTheProtocolsLimit() throws Exception {
        Path img = dir.resolve("o.raw");
        Files.write(img, new byte[1 << 20]);
        String name = "é".repeat(Nbd.MAX_STRING / 2); // 4096 bytes
        try (DiskImage image = Images.open(img, null, false, false);
                NbdServer s = NbdServer.startUnix(dir.resolve("o.sock"), 4)) {
            s.addExport(new NbdExport("o", image, false));
            try (RawClient c = RawClient.unix(dir.resolve("o.sock"))) {
                c.option(Nbd.OPT_GO, c.goData(name));
                NbdServerTest.Reply r = c.optionReply();
                assertEquals(Nbd.REP_ERR_UNKNOWN, r.type());
                assertTrue(r.data().length <= Nbd.MAX_STRING, r.data().length + " bytes");
                String message = StandardCharsets.UTF_8
                        .newDecoder()
                        .onMalformedInput(CodingErrorAction.REPORT)
                        .onUnmappableCharacter(CodingErrorAction.REPORT)
                        .decode(ByteBuffer.wrap(r.data()))
                        .toString(); // throws MalformedInputException on a cut inside a character
                assertTrue(message.startsWith("no export named 'éé"), message.substring(0, 40));
                // the connection goes on: the client can still choose an export
                c.go("o");
            }
        }
    }

    @Test
    void utf8PrefixNeverEndsInsideACharacter() {
        byte[] b = "a€é😀".getBytes(StandardCharsets.UTF_8); // 1 + 3 + 2 + 4 bytes
        int[] want = {0, 1, 1, 1, 4, 4, 6, 6, 6, 6, 10, 10};
        for (int max = 0; max < want.length; max++) {
            assertEquals(want[max], Nbd.utf8Prefix(b, max), "at most " + max + " bytes");
        }
    }
}
