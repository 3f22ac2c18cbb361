// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * A real file system that stops answering on demand, for tests of requests stuck in image I/O (a hung NFS server or
 * FUSE daemon, a dying disk): fuse2fs serving a fresh ext4 image, mounted under a test's directory, stopped with
 * SIGSTOP ({@link #stop}: a read that misses the page cache then waits in the kernel for the daemon) and continued with
 * SIGCONT. {@link #close} continues and unmounts it. Needs root (to drop the page cache), fuse2fs, fusermount3 and
 * /dev/fuse: a missing one fails the test through {@link Require}.
 */
public final class StoppableFuse implements AutoCloseable {
    static final Duration TIMEOUT = Duration.ofSeconds(20);

    private final Path dir;
    private final Path mount;
    private final Process fuse;

    private StoppableFuse(Path dir, Path mount, Process fuse) {
        this.dir = dir;
        this.mount = mount;
        this.fuse = fuse;
    }

    /** Makes a 32 MiB ext4 file system in {@code dir} and mounts it at {@code dir}/mnt. */
    public static StoppableFuse mount(Path dir) throws Exception {
        Path fuse2fs = Require.program("fuse2fs", "apt-get install fuse2fs fuse3");
        Path mkfs = Require.program("mkfs.ext4", "apt-get install e2fsprogs");
        Require.program("fusermount3", "apt-get install fuse3");
        Require.that(Files.isReadable(Path.of("/dev/fuse")), "/dev/fuse is missing (modprobe fuse)");
        Require.that(
                Files.isWritable(Path.of("/proc/sys/vm/drop_caches")),
                "root, to drop the page cache (/proc/sys/vm/drop_caches) so a read reaches the FUSE daemon");
        Path fs = dir.resolve("fs.img");
        try (RandomAccessFile f = new RandomAccessFile(fs.toFile(), "rw")) {
            f.setLength(32 << 20);
        }
        run(List.of(mkfs.toString(), "-q", "-F", fs.toString()));
        Path mount = Files.createDirectory(dir.resolve("mnt"));
        Process fuse = new ProcessBuilder(fuse2fs.toString(), fs.toString(), mount.toString(), "-f", "-o", "fakeroot")
                .redirectErrorStream(true)
                .redirectOutput(dir.resolve("fuse2fs.log").toFile())
                .start();
        StoppableFuse f = new StoppableFuse(dir, mount, fuse);
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (!f.mounted()) {
            assertTrue(fuse.isAlive(), "fuse2fs exited: " + Files.readString(dir.resolve("fuse2fs.log")));
            assertTrue(System.nanoTime() < deadline, "fuse2fs did not mount " + mount + " within " + TIMEOUT);
            Thread.sleep(50);
        }
        return f;
    }

    /** A file of {@code bytes} bytes of 0x5a on the file system; its real path. */
    public Path file(String name, int bytes) throws IOException {
        byte[] data = new byte[bytes];
        java.util.Arrays.fill(data, (byte) 0x5a);
        Path p = mount.resolve(name);
        Files.write(p, data);
        return p.toRealPath();
    }

    /**
     * Stops the daemon (SIGSTOP), lets libfuse's cached attributes (1 s) time out and drops the page cache: a read
     * of a file on it now waits for the daemon.
     */
    public void stop() throws Exception {
        signal("-STOP");
        Thread.sleep(1500);
        Files.writeString(Path.of("/proc/sys/vm/drop_caches"), "1");
    }

    /** Lets the daemon answer again (SIGCONT). */
    public void resume() throws Exception {
        signal("-CONT");
    }

    /**
     * Kills the daemon (SIGKILL, stopped or not), as a FUSE daemon that crashed: the kernel then fails every request
     * to the file system, those it waits on included, with an error (ECONNABORTED, then ENOTCONN).
     */
    public void kill() throws InterruptedException {
        fuse.destroyForcibly();
        assertTrue(fuse.waitFor(TIMEOUT.toSeconds(), TimeUnit.SECONDS), "fuse2fs did not end on SIGKILL");
    }

    /** Whether the daemon still runs (stopped or not). */
    public boolean alive() {
        return fuse.isAlive();
    }

    /** Continues the daemon, unmounts the file system (once nothing holds a file of it open) and ends the daemon. */
    @Override
    public void close() throws Exception {
        resume();
        try {
            if (mounted()) {
                // Busy while the code under test still holds a file of it open (a daemon a test closes after this):
                // then detached (lazy unmount). Asserting on the first unmount left fuse2fs running and, once it
                // ended, a dead mount under /tmp for every such test run.
                Process p = new ProcessBuilder("fusermount3", "-u", mount.toString())
                        .redirectErrorStream(true)
                        .start();
                p.getInputStream().readAllBytes();
                if (!p.waitFor(30, TimeUnit.SECONDS) || p.exitValue() != 0) {
                    run(List.of("fusermount3", "-u", "-z", mount.toString()));
                }
            }
        } finally {
            fuse.destroy();
            fuse.waitFor(10, TimeUnit.SECONDS);
        }
    }

    /**
     * The threads of this process blocked in a system call whose first argument is one of {@code fds}
     * (/proc/self/task/TID/syscall: the call's number and arguments in hex, or "running").
     */
    public static List<String> blockedOn(List<Integer> fds) {
        List<String> out = new ArrayList<>();
        try (var tasks = Files.list(Path.of("/proc/self/task"))) {
            for (Path t : (Iterable<Path>) tasks::iterator) {
                String[] f;
                try {
                    f = Files.readString(t.resolve("syscall")).strip().split(" ");
                } catch (IOException e) {
                    continue; // the thread ended
                }
                if (f.length > 1 && !f[0].equals("running") && !f[0].equals("-1")) {
                    long arg0 = Long.parseUnsignedLong(f[1].substring(2), 16);
                    if (fds.contains((int) arg0) && arg0 < Integer.MAX_VALUE) {
                        out.add(t.getFileName() + ": " + String.join(" ", f));
                    }
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    /** This process's descriptors of {@code file}, other than {@code except} (-1: none). */
    public static List<Integer> descriptorsOf(Path file, int except) {
        List<Integer> out = new ArrayList<>();
        for (int n : OpenFiles.numbers()) {
            if (n != except && file.toString().equals(OpenFiles.kind(n))) {
                out.add(n);
            }
        }
        return out;
    }

    private boolean mounted() throws IOException {
        return Files.readAllLines(Path.of("/proc/self/mountinfo")).stream()
                .anyMatch(l -> l.contains(" " + mount + " ") && l.contains(" - fuse"));
    }

    private void signal(String sig) throws Exception {
        if (fuse.isAlive()) {
            run(List.of("kill", sig, Long.toString(fuse.pid())));
        }
    }

    /** Runs {@code command} to its end; fails the test when it fails. */
    public static void run(List<String> command) throws Exception {
        Process p = new ProcessBuilder(command).redirectErrorStream(true).start();
        String out = new String(p.getInputStream().readAllBytes());
        assertTrue(p.waitFor(30, TimeUnit.SECONDS), command + " did not finish");
        assertEquals(0, p.exitValue(), command + ": " + out);
    }

    @Override
    public String toString() {
        return "fuse2fs at " + mount + " (" + dir.resolve("fuse2fs.log") + ")";
    }
}
