// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * What the kernel says about this process's descriptors (/proc/self/fd and /proc/self/fdinfo): which file a number
 * refers to, and who else refers to it — for tests about descriptors kept open, reused or leaked. A number may be
 * closed between listing and looking: it is then left out.
 *
 * <p>A test that checks the code under test left nothing open takes a {@link #snapshot()} first and asks it for
 * {@link Snapshot#openedSince()} at the end — not a count of /proc/self/fd before and after. The tests share one JVM
 * whose other threads open and close descriptors at any time: an earlier test's HTTP client whose selector thread
 * closes its epoll and eventfd once a garbage collection finds the client unreferenced (seen closing them under a
 * later test), a child process's pipes the JDK's reaper thread closes when the process exits, a given-up queue thread
 * closing its parked kick, call and err when it ends. A count moves with all of them (HostileFrontendTest once saw 43
 * where 46 had been open); what was opened since the snapshot and is still open does not, and it names the leak.
 */
public final class OpenFiles {
    private static final Path FD = Path.of("/proc/self/fd");
    private static final Path FDINFO = Path.of("/proc/self/fdinfo");

    private OpenFiles() {}

    /** The descriptor numbers open now. */
    public static List<Integer> numbers() {
        List<Integer> out = new ArrayList<>();
        try (var s = Files.list(FD)) {
            s.forEach(p -> out.add(Integer.parseInt(p.getFileName().toString())));
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out;
    }

    /** What number {@code fd} refers to (a path, "socket:[N]", "anon_inode:[eventfd]"), or null when it is closed. */
    public static String kind(int fd) {
        try {
            return Files.readSymbolicLink(FD.resolve(Integer.toString(fd))).toString();
        } catch (IOException e) {
            return null;
        }
    }

    /** The lines of {@code fd}'s fdinfo, empty when it is closed. */
    private static List<String> info(int fd) {
        try {
            return Files.readAllLines(FDINFO.resolve(Integer.toString(fd)));
        } catch (IOException e) {
            return List.of();
        }
    }

    /**
     * The kernel's id of the eventfd {@code fd} refers to ("eventfd-id" in its fdinfo), which tells one eventfd from
     * another where /proc/self/fd names them all alike; -1 when {@code fd} is closed or no eventfd. A missing
     * prerequisite ({@link Require}) on a kernel that does not show the id.
     */
    public static long eventfdId(int fd) {
        List<String> lines = info(fd);
        for (String line : lines) {
            if (line.startsWith("eventfd-id:")) {
                return Long.parseLong(line.substring("eventfd-id:".length()).strip());
            }
        }
        boolean eventfd = lines.stream().anyMatch(l -> l.startsWith("eventfd-count:"));
        Require.that(!eventfd, "a kernel that shows eventfd-id in /proc/self/fdinfo");
        return -1;
    }

    /** The numbers in this process that refer to the eventfd with kernel id {@code id}. */
    public static List<Integer> eventfd(long id) {
        List<Integer> out = new ArrayList<>();
        for (int n : numbers()) {
            if ("anon_inode:[eventfd]".equals(kind(n)) && eventfdId(n) == id) {
                out.add(n);
            }
        }
        return out;
    }

    /** Whether an epoll set of this process has a registration made through number {@code fd} ("tfd:" lines). */
    public static boolean watchedByEpoll(int fd) {
        for (int n : numbers()) {
            if (!"anon_inode:[eventpoll]".equals(kind(n))) {
                continue;
            }
            for (String line : info(n)) {
                if (line.startsWith("tfd:") && Integer.parseInt(line.split("\\s+")[1]) == fd) {
                    return true;
                }
            }
        }
        return false;
    }

    /** This process's descriptors now, each with what it refers to. */
    public static Snapshot snapshot() {
        Map<Integer, String> files = new TreeMap<>(); // in number order, for messages
        for (int n : numbers()) {
            String id = identity(n);
            if (id != null) {
                files.put(n, id);
            }
        }
        return new Snapshot(files);
    }

    /**
     * What {@code fd} refers to, told apart from another file of the same kind: a socket's or pipe's name carries its
     * inode; anything else adds the mount and inode from its fdinfo, and an eventfd its kernel id (eventfds, epoll
     * sets and other anonymous inodes share one inode; those other than eventfds show only their kind). From fdinfo,
     * not stat: stat of a file on FUSE waits for its daemon, our own fdinfo never does. Null when {@code fd} is closed.
     */
    private static String identity(int fd) {
        String kind = kind(fd);
        if (kind == null || kind.startsWith("socket:[") || kind.startsWith("pipe:[")) {
            return kind;
        }
        StringBuilder id = new StringBuilder(kind);
        for (String line : info(fd)) {
            for (String field : new String[] {"mnt_id:", "ino:", "eventfd-id:"}) {
                if (line.startsWith(field)) {
                    id.append(' ').append(line.replaceAll("\\s+", ""));
                }
            }
        }
        return id.toString();
    }

    /** The descriptors of this process at one moment ({@link #snapshot()}). */
    public static final class Snapshot {
        private final Map<Integer, String> files;

        private Snapshot(Map<Integer, String> files) {
            this.files = files;
        }

        /**
         * The descriptors open now that were not at the snapshot — opened since and still open, a number closed and
         * opened again for another file included — as "fd N: what it refers to". Descriptors closed since, by
         * whichever thread, do not count.
         */
        public List<String> openedSince() {
            List<String> out = new ArrayList<>();
            snapshot().files.forEach((n, id) -> {
                if (!id.equals(files.get(n))) {
                    out.add("fd " + n + ": " + id);
                }
            });
            return out;
        }
    }
}
