// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * What the kernel says about this process's descriptors (/proc/self/fd and /proc/self/fdinfo): which file a number
 * refers to, and who else refers to it — for tests about descriptors kept open, reused or leaked. A number may be
 * closed between listing and looking: it is then left out.
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
}
