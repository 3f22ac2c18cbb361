// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.ByteArrayOutputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Archives written by {@link CpioWriter} are read back by GNU cpio, the reference implementation of newc. */
class CpioWriterTest {

    @TempDir
    Path dir;

    @Test
    void gnuCpioListsAndExtractsWhatWasWritten() throws Exception {
        byte[] data = new byte[70_001]; // odd size: exercises the 4-byte padding
        new Random(1).nextBytes(data);
        ByteArrayOutputStream bytes = new ByteArrayOutputStream();
        try (CpioWriter cpio = new CpioWriter(bytes)) {
            cpio.file("/run.sh", "echo hi\n".getBytes(StandardCharsets.UTF_8), 0755);
            cpio.file("/root/deep/data.bin", data, 0600);
            cpio.directory("/opt/empty");
        }
        assertEquals(0, bytes.size() % 4);
        Path archive = dir.resolve("a.cpio");
        Files.write(archive, bytes.toByteArray());

        Path out = Files.createDirectory(dir.resolve("out"));
        assertEquals(0, cpio(out, "-i", "-d", "--quiet", "-F", archive.toString()));
        assertEquals("echo hi\n", Files.readString(out.resolve("run.sh")));
        assertArrayEquals(data, Files.readAllBytes(out.resolve("root/deep/data.bin")));
        assertEquals("rwxr-xr-x", PosixFilePermissions.toString(Files.getPosixFilePermissions(out.resolve("run.sh"))));
        assertEquals(
                "rw-------",
                PosixFilePermissions.toString(Files.getPosixFilePermissions(out.resolve("root/deep/data.bin"))));
        assertEquals(true, Files.isDirectory(out.resolve("opt/empty")));

        assertEquals(0, cpio(out, "-t", "--quiet", "-F", archive.toString()));
        List<String> listed = Files.readAllLines(dir.resolve("cpio.log"));
        assertEquals(List.of("run.sh", "root", "root/deep", "root/deep/data.bin", "opt", "opt/empty"), listed);
    }

    @Test
    void rejectsPathsThatEscapeOrAreEmpty() {
        CpioWriter cpio = new CpioWriter(new ByteArrayOutputStream());
        for (String bad : List.of("", "/", "a/../b", "../x", "a//b", "dir/", "./x")) {
            assertThrows(IllegalArgumentException.class, () -> cpio.file(bad, new byte[0], 0644), bad);
        }
    }

    private int cpio(Path cwd, String... args) {
        List<String> cmd = new java.util.ArrayList<>(List.of("cpio"));
        cmd.addAll(List.of(args));
        try (ChildProcess p = ChildProcess.builder(cmd)
                .log(dir.resolve("cpio.log"))
                .directory(cwd)
                .start()) {
            assertEquals(true, p.waitFor(Duration.ofSeconds(30)), "cpio did not finish");
            return p.exitValue();
        }
    }
}
