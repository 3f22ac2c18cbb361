// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.OptionalLong;

/**
 * The process's locked-memory limit (RLIMIT_MEMLOCK), which the VFIO type1 IOMMU charges for every page it pins for
 * DMA unless the process has CAP_IPC_LOCK. Read from /proc/self/limits, so no system call binding is needed.
 */
final class MemLockLimit {
    /** Soft limit in bytes; empty when unlimited or unreadable. */
    record Limit(OptionalLong soft, OptionalLong hard) {}

    private MemLockLimit() {}

    static Limit current() {
        try {
            return parse(Files.readAllLines(Path.of("/proc/self/limits")));
        } catch (IOException | RuntimeException e) {
            return new Limit(OptionalLong.empty(), OptionalLong.empty());
        }
    }

    static Limit parse(List<String> lines) {
        for (String line : lines) {
            if (line.startsWith("Max locked memory")) {
                String[] f = line.substring("Max locked memory".length()).trim().split("\\s+");
                if (f.length >= 2) {
                    return new Limit(value(f[0]), value(f[1]));
                }
            }
        }
        return new Limit(OptionalLong.empty(), OptionalLong.empty());
    }

    private static OptionalLong value(String s) {
        if (s.equals("unlimited")) {
            return OptionalLong.empty();
        }
        try {
            return OptionalLong.of(Long.parseLong(s));
        } catch (NumberFormatException e) {
            return OptionalLong.empty();
        }
    }

    /** The remedy text for a DMA mapping of {@code bytes} that failed with ENOMEM. */
    static String explainEnomem(long bytes) {
        Limit l = current();
        String now = l.soft().isPresent()
                ? l.soft().getAsLong() / 1024 + " KiB (soft), "
                        + (l.hard().isPresent() ? l.hard().getAsLong() / 1024 + " KiB" : "unlimited") + " (hard)"
                : "unlimited";
        return "the VFIO type1 IOMMU pins every mapped page and charges it to the locked-memory limit "
                + "(RLIMIT_MEMLOCK, now " + now + "; this mapping would pin " + bytes / 1024
                + " KiB more) — raise it with 'ulimit -l <KiB>' or 'ulimit -l unlimited' in the shell that starts iovirt "
                + "(systemd: LimitMEMLOCK=; /etc/security/limits.conf: memlock), or run with CAP_IPC_LOCK";
    }
}
