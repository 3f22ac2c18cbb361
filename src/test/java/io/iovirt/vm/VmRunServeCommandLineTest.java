// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * The QEMU command line {@code vm run --serve} prints is meant to be pasted into a shell: a --run-dir with a space
 * (or a quote) used to be printed bare, so the shell split each socket argument in two.
 */
@Timeout(300)
class VmRunServeCommandLineTest {
    @TempDir
    Path dir;

    @Test
    void thePrintedCommandLineKeepsEachArgumentOneShellWord() throws Exception {
        Path img = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
            f.setLength(16L << 20);
        }
        Path runParent = Files.createDirectories(dir.resolve("vm's run"));
        try (ChildProcess vm = ChildProcess.builder(IovirtCli.command(
                        "vm",
                        "run",
                        "serve-test",
                        "--serve",
                        "--disk",
                        "pv:" + img,
                        "--nic",
                        "fv",
                        "--run-dir",
                        runParent.toString(),
                        "--state-dir",
                        dir.resolve("state").toString()))
                .name("iovirt vm run --serve")
                .log(dir.resolve("vm-run.log"))
                .start()) {
            Await.until(
                    Duration.ofSeconds(120),
                    "vm run serving",
                    vm,
                    () -> vm.log().contains("backends running"));
            String line = vm.log()
                    .lines()
                    .filter(l -> l.startsWith("qemu-system-x86_64 "))
                    .findFirst()
                    .orElseThrow(() -> new AssertionError("no command line printed:\n" + vm.log()));
            assertTrue(line.endsWith(" ..."), line);
            // what the shell makes of it: one argument per line
            Process sh = new ProcessBuilder(
                            "bash", "-c", "printf '%s\\n' " + line.substring(0, line.length() - " ...".length()))
                    .redirectErrorStream(true)
                    .start();
            List<String> words = new String(sh.getInputStream().readAllBytes(), StandardCharsets.UTF_8)
                    .lines()
                    .toList();
            assertEquals(0, sh.waitFor(), String.join("\n", words));
            String disk = words.stream()
                    .filter(w -> w.startsWith("socket,id=disk0,path="))
                    .findFirst()
                    .orElseThrow(() -> new AssertionError("the disk's chardev was split: " + words));
            Path sock = Path.of(disk.substring("socket,id=disk0,path=".length()));
            assertEquals(runParent, sock.getParent().getParent(), disk);
            assertTrue(Files.exists(sock), "the printed socket is not there: " + sock);
            assertTrue(
                    words.stream()
                            .anyMatch(w -> w.equals("stream,id=nic0,server=off,addr.type=unix,addr.path="
                                    + sock.resolveSibling("nic0.sock"))),
                    words.toString());

            new ProcessBuilder("kill", "-TERM", Long.toString(vm.pid())).start().waitFor();
            assertTrue(vm.waitFor(Duration.ofSeconds(60)), vm.logTail(20));
            assertEquals(0, vm.exitValue(), vm.log());
        }
    }
}
