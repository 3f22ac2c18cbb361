// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.nbd.NbdServerTest.Reply;
import io.iovirt.storage.RawImage;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The transmission flags a client is told, by NBD_OPT_INFO, NBD_OPT_GO and NBD_OPT_EXPORT_NAME: NBD_FLAG_SEND_DF
 * only when structured replies were negotiated first (doc/proto.md: the server "MUST leave this flag clear if
 * structured replies have not been negotiated"), the other flags either way.
 */
class NbdTransmissionFlagsTest {
    @TempDir
    Path dir;

    @Test
    void dontFragmentIsAdvertisedOnlyWithStructuredReplies() throws Exception {
        Path img = dir.resolve("f.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        Path sock = dir.resolve("f.sock");
        try (RawImage image = RawImage.open(img, false, false);
                NbdServer s = NbdServer.startUnix(sock, 16)) { // six connections, one after another: room for all
            s.addExport(new NbdExport("f", image, false));
            for (boolean structured : new boolean[] {false, true}) {
                for (int option : new int[] {Nbd.OPT_INFO, Nbd.OPT_GO, Nbd.OPT_EXPORT_NAME}) {
                    int flags = flags(sock, structured, option);
                    String what = (structured ? "with" : "without") + " structured replies, option " + option
                            + ": flags 0x" + Integer.toHexString(flags);
                    assertEquals(structured, (flags & Nbd.TF_SEND_DF) != 0, what);
                    int always = Nbd.TF_HAS_FLAGS
                            | Nbd.TF_SEND_FLUSH
                            | Nbd.TF_SEND_FUA
                            | Nbd.TF_CAN_MULTI_CONN
                            | Nbd.TF_SEND_TRIM
                            | Nbd.TF_SEND_WRITE_ZEROES;
                    assertEquals(always, flags & always, what);
                    assertEquals(0, flags & Nbd.TF_READ_ONLY, what);
                }
            }
        }
    }

    /**
     * NBD_CMD_FLAG_FUA is accepted on every command once NBD_FLAG_SEND_FUA was advertised (doc/proto.md: the server
     * "MUST accept all commands with this bit set (even by ignoring the bit)"; QEMU 2.x's client set it on every
     * FLUSH). A FLUSH or BLOCK_STATUS with FUA used to fail with EINVAL.
     */
    @Test
    void fuaIsAcceptedOnEveryCommand() throws Exception {
        Path img = dir.resolve("u.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(1 << 20);
        }
        Path sock = dir.resolve("u.sock");
        try (RawImage image = RawImage.open(img, false, false);
                NbdServer s = NbdServer.startUnix(sock, 4)) {
            s.addExport(new NbdExport("u", image, false));
            try (RawClient c = RawClient.unix(sock)) {
                c.go("u");
                assertEquals(0, c.request(Nbd.CMD_FLUSH, Nbd.CMD_FLAG_FUA, 0, 0).error(), "FLUSH with FUA");
                assertEquals(
                        0, c.request(Nbd.CMD_READ, Nbd.CMD_FLAG_FUA, 0, 512).error(), "READ with FUA");
                assertEquals(
                        0, c.request(Nbd.CMD_TRIM, Nbd.CMD_FLAG_FUA, 0, 4096).error(), "TRIM with FUA");
            }
            try (RawClient c = RawClient.unix(sock)) {
                c.structuredReplies();
                c.baseAllocation("u");
                c.go("u");
                long cookie = c.send(Nbd.CMD_BLOCK_STATUS, Nbd.CMD_FLAG_FUA, 0, 4096, null);
                NbdServerTest.Answer a = c.answer(true, 0);
                assertEquals(cookie, a.cookie());
                assertEquals(0, a.error(), "BLOCK_STATUS with FUA");
                cookie = c.send(Nbd.CMD_FLUSH, Nbd.CMD_FLAG_FUA, 0, 0, null);
                a = c.answer(true, 0);
                assertEquals(0, a.error(), "FLUSH with FUA, structured");
                assertEquals(cookie, a.cookie());
            }
            NbdExportStats st = s.exports().iterator().next().stats();
            assertEquals(0, st.errors.sum());
            assertEquals(2, st.flushes.sum());
        }
    }

    /** The transmission flags one connection is told by {@code option}, after STRUCTURED_REPLY if asked. */
    private static int flags(Path sock, boolean structured, int option) throws IOException {
        try (RawClient c = RawClient.unix(sock)) {
            if (structured) {
                c.option(Nbd.OPT_STRUCTURED_REPLY, new byte[0]);
                assertEquals(Nbd.REP_ACK, c.optionReply().type());
            }
            if (option == Nbd.OPT_EXPORT_NAME) {
                c.option(option, "f".getBytes(StandardCharsets.UTF_8));
                ByteBuffer r = c.read(10); // size, flags (no zeroes: the client asked for none)
                r.getLong();
                return Short.toUnsignedInt(r.getShort());
            }
            c.option(option, c.goData("f"));
            int flags = -1;
            while (true) {
                Reply r = c.optionReply();
                if (r.type() == Nbd.REP_ACK) {
                    break;
                }
                assertEquals(Nbd.REP_INFO, r.type());
                ByteBuffer d = ByteBuffer.wrap(r.data());
                if (d.getShort() == Nbd.INFO_EXPORT) {
                    d.getLong();
                    flags = Short.toUnsignedInt(d.getShort());
                }
            }
            assertTrue(flags >= 0, "no NBD_INFO_EXPORT reply");
            return flags;
        }
    }
}
