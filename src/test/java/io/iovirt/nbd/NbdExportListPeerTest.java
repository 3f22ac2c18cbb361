// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import io.iovirt.testing.Require;
import java.io.RandomAccessFile;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Tag;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The handshake's export listing (NBD_OPT_LIST, then NBD_OPT_INFO per export with its block sizes, and
 * NBD_OPT_LIST_META_CONTEXT) as real clients use it: {@code qemu-nbd -L}, which prints each export's name,
 * description, size, transmission flags and minimum/preferred/maximum block size, and the kernel client's
 * {@code nbd-client -l}, which prints name and description. {@code nbd-client -l} only talks the handshake over its
 * socket: it needs no nbd.ko (this host's kernel has none, and the test runs without it).
 *
 * <p>Two exports that differ in everything listed: a read-only one, and a writable O_DIRECT one whose minimum block
 * is its O_DIRECT alignment (when the temporary directory's file system takes O_DIRECT; otherwise that export is
 * buffered, its minimum block 1, and the test says so on stdout).
 */
@Tag("peer") // qemu-nbd and nbd-client: Failsafe
class NbdExportListPeerTest {
    private static final long RO_SIZE = (3 << 20) + (64 << 10);
    private static final long DIRECT_SIZE = 8 << 20;

    @TempDir
    Path dir;

    @Test
    void qemuNbdAndNbdClientListNamesDescriptionsSizesFlagsAndBlockSizes() throws Exception {
        Path qemuNbd = Require.program("qemu-nbd", "apt-get install qemu-utils (scripts/install-deps.sh installs it)");
        Path nbdClient =
                Require.program("nbd-client", "apt-get install nbd-client (scripts/install-deps.sh installs it)");
        Path roFile = sized(dir.resolve("archive.raw"), RO_SIZE);
        Path directFile = sized(dir.resolve("scratch.raw"), DIRECT_SIZE);
        boolean direct = takesODirect(directFile);
        if (!direct) {
            System.out.println("O_DIRECT is not supported under " + dir + ": the 'scratch' export is buffered, so"
                    + " its minimum block is 1 and the O_DIRECT alignment is not checked");
        }
        Path sock = dir.resolve("list.sock");
        try (DiskImage roImage = Images.open(roFile, null, true, false);
                DiskImage directImage = Images.open(directFile, null, false, direct);
                NbdServer s = NbdServer.startUnix(sock, 4)) {
            assertEquals(direct, directImage.direct());
            s.addExport(new NbdExport("archive", roImage, true, "read-only archive", new NbdExportStats()));
            s.addExport(new NbdExport("scratch", directImage, false, "O_DIRECT scratch disk", new NbdExportStats()));
            int directMin = direct ? directImage.blockSize() : 1;
            if (direct) {
                assertTrue(
                        directMin >= 512 && Integer.bitCount(directMin) == 1,
                        "O_DIRECT alignment " + directMin + " is not a power of two of at least 512");
            }

            String out = ok(qemuNbd.toString(), "-L", "-k", sock.toString());
            Map<String, Map<String, String>> listed = qemuNbdList(out);
            assertTrue(out.contains("exports available: 2"), out);
            assertEquals(Set.of("archive", "scratch"), listed.keySet(), out);

            Map<String, String> ro = listed.get("archive");
            assertEquals("read-only archive", ro.get("description"), out);
            assertEquals(Long.toString(RO_SIZE), ro.get("size"), out);
            Set<String> roFlags = flagWords(ro.get("flags"));
            assertTrue(roFlags.contains("readonly"), out);
            assertFalse(roFlags.contains("trim") || roFlags.contains("zeroes"), "a read-only export: " + out);
            assertEquals("1", ro.get("min block"), out);
            assertEquals("4096", ro.get("opt block"), out);
            assertEquals(Integer.toString(NbdConnection.MAX_PAYLOAD), ro.get("max block"), out);
            assertEquals("base:allocation", ro.get("meta contexts"), out);

            Map<String, String> rw = listed.get("scratch");
            assertEquals("O_DIRECT scratch disk", rw.get("description"), out);
            assertEquals(Long.toString(DIRECT_SIZE), rw.get("size"), out);
            Set<String> rwFlags = flagWords(rw.get("flags"));
            assertFalse(rwFlags.contains("readonly"), out);
            assertTrue(rwFlags.containsAll(List.of("flush", "fua", "trim", "zeroes", "fast-zero")), out);
            assertEquals(Integer.toString(directMin), rw.get("min block"), out);
            assertEquals(Integer.toString(Math.max(4096, directMin)), rw.get("opt block"), out);
            assertEquals(Integer.toString(NbdConnection.MAX_PAYLOAD), rw.get("max block"), out);
            assertEquals("base:allocation", rw.get("meta contexts"), out);

            // the kernel client's list: "name: description" per export
            String l = ok(nbdClient.toString(), "-l", "-unix", sock.toString());
            Set<String> lines =
                    l.lines().filter(x -> !x.startsWith("Negotiation")).collect(Collectors.toSet());
            assertEquals(Set.of("archive: read-only archive", "scratch: O_DIRECT scratch disk"), lines, l);

            io.iovirt.testing.Await.until(
                    java.time.Duration.ofSeconds(20),
                    "the listing connections to close",
                    () -> s.connectionCount() == 0);
            for (NbdExport e : s.exports()) {
                assertEquals(0, e.stats().connectionsTotal.sum(), "listing opens no export: " + e.stats());
            }
        }
    }

    private static Path sized(Path p, long size) throws Exception {
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    private static boolean takesODirect(Path p) {
        try (var fd = FileIo.open(p, FileIo.O_RDWR | FileIo.O_DIRECT)) {
            return true;
        } catch (LinuxException e) {
            return false;
        }
    }

    /**
     * qemu-nbd -L's output (qemu-nbd.c, qemu_nbd_client_list) by export: " export: 'NAME'", then
     * "  key: value" lines; the meta contexts follow "  available meta contexts: N" one per line, joined here with
     * commas under "meta contexts".
     */
    private static Map<String, Map<String, String>> qemuNbdList(String out) {
        Map<String, Map<String, String>> exports = new LinkedHashMap<>();
        Map<String, String> cur = null;
        boolean contexts = false;
        for (String line : out.lines().toList()) {
            if (line.startsWith(" export: '") && line.endsWith("'")) {
                cur = new LinkedHashMap<>();
                exports.put(line.substring(" export: '".length(), line.length() - 1), cur);
                contexts = false;
            } else if (cur != null && line.startsWith("  available meta contexts:")) {
                contexts = true;
                cur.put("meta contexts", "");
            } else if (cur != null && contexts && line.startsWith("   ")) {
                String c = cur.get("meta contexts");
                cur.put("meta contexts", c.isEmpty() ? line.strip() : c + "," + line.strip());
            } else if (cur != null && line.startsWith("  ") && line.contains(":")) {
                int i = line.indexOf(':');
                cur.put(line.substring(2, i), line.substring(i + 1).strip());
                contexts = false;
            }
        }
        return exports;
    }

    /** "0x48f ( readonly flush fua df cache )": the words in the parentheses. */
    private static Set<String> flagWords(String flags) {
        int open = flags.indexOf('(');
        int close = flags.lastIndexOf(')');
        assertTrue(open >= 0 && close > open, "flags without their names: " + flags);
        return new TreeSet<>(List.of(flags.substring(open + 1, close).strip().split("\\s+")));
    }
}
