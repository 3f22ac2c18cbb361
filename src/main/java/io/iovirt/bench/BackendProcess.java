// SPDX-License-Identifier: Apache-2.0
package io.iovirt.bench;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.OptionalLong;

/**
 * The backend process on the other end of the socket, found through SO_PEERCRED, observed through /proc: its CPU
 * time (utime + stime of all its threads) and its memory. The demo reads QEMU's and its own CPU time through it too. Anything unreadable (another user's process without
 * privileges, a backend in another PID namespace) is reported as unknown, never guessed.
 */
public final class BackendProcess {
    /**
     * USER_HZ: the unit of utime/stime in /proc/PID/stat. The kernel reports these in USER_HZ whatever its internal
     * HZ is, and USER_HZ is 100 on every Linux architecture the JDK runs on.
     */
    private static final long NANOS_PER_TICK = 1_000_000_000L / 100;

    private final long pid;
    private final Path proc;

    public BackendProcess(long pid) {
        this(pid, Path.of("/proc"));
    }

    BackendProcess(long pid, Path procRoot) {
        this.pid = pid;
        this.proc = procRoot.resolve(Long.toString(pid));
    }

    public long pid() {
        return pid;
    }

    /** The process's command name ({@code /proc/PID/comm}), or "?" when unreadable. */
    public String name() {
        try {
            return Files.readString(proc.resolve("comm")).strip();
        } catch (IOException e) {
            return "?";
        }
    }

    /** CPU time the process has used so far (user + system, all threads, dead ones included), in nanoseconds. */
    public OptionalLong cpuNanos() {
        try {
            return OptionalLong.of(parseCpuTicks(Files.readString(proc.resolve("stat"))) * NANOS_PER_TICK);
        } catch (IOException | RuntimeException e) {
            return OptionalLong.empty();
        }
    }

    /** CPU time between two readings of {@link #cpuNanos}; unknown when either is. */
    public static OptionalLong elapsed(OptionalLong before, OptionalLong after) {
        return before.isPresent() && after.isPresent()
                ? OptionalLong.of(after.getAsLong() - before.getAsLong())
                : OptionalLong.empty();
    }

    /** utime + stime from a /proc/PID/stat line; the command name may contain spaces and parentheses. */
    static long parseCpuTicks(String stat) {
        int end = stat.lastIndexOf(')');
        if (end < 0) {
            throw new IllegalArgumentException("not a /proc/PID/stat line: " + stat);
        }
        String[] f = stat.substring(end + 2).trim().split(" +");
        // f[0] is field 3 (state); utime and stime are fields 14 and 15
        return Long.parseLong(f[11]) + Long.parseLong(f[12]);
    }

    /**
     * Resident memory in KiB: the whole process, and the part that is mappings of shared memory files whose name
     * contains {@code sharedName} (our guest RAM, e.g. "memfd:iovirt-guest-ram").
     */
    public record Memory(long rssKiB, long anonKiB, long fileKiB, long shmemKiB, long guestMappingKiB) {
        /** What the backend holds beyond the guest memory it maps. */
        public long beyondGuestKiB() {
            return rssKiB - guestMappingKiB;
        }
    }

    /** The process's memory now, or null when /proc does not let us read it. */
    public Memory memory(String sharedName) {
        try {
            List<String> status = Files.readAllLines(proc.resolve("status"));
            long guest = guestMappingKiB(Files.readAllLines(proc.resolve("smaps")), sharedName);
            return new Memory(
                    statusKiB(status, "VmRSS"),
                    statusKiB(status, "RssAnon"),
                    statusKiB(status, "RssFile"),
                    statusKiB(status, "RssShmem"),
                    guest);
        } catch (IOException | RuntimeException e) {
            return null;
        }
    }

    static long statusKiB(List<String> status, String key) {
        for (String line : status) {
            if (line.startsWith(key + ":")) {
                String v = line.substring(key.length() + 1).trim();
                if (!v.endsWith(" kB")) {
                    throw new IllegalArgumentException("unexpected unit in /proc status line: " + line);
                }
                return Long.parseLong(v.substring(0, v.length() - 3).trim());
            }
        }
        throw new IllegalArgumentException("no " + key + " in /proc status");
    }

    /** Sums the Rss of every mapping in /proc/PID/smaps whose path contains {@code name}. */
    static long guestMappingKiB(List<String> smaps, String name) {
        long total = 0;
        boolean inGuest = false;
        for (String line : smaps) {
            if (isMappingHeader(line)) {
                inGuest = line.contains(name);
            } else if (inGuest && line.startsWith("Rss:")) {
                String v = line.substring(4).trim();
                total += Long.parseLong(v.substring(0, v.length() - 3).trim());
            }
        }
        return total;
    }

    /** Mapping lines start with an address range "start-end"; attribute lines with "Name:". */
    private static boolean isMappingHeader(String line) {
        int dash = line.indexOf('-');
        int space = line.indexOf(' ');
        return dash > 0 && space > dash && line.chars().limit(dash).allMatch(c -> Character.digit(c, 16) >= 0);
    }
}
