// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** CPU time (user + system) a process has used, from /proc/PID/stat, in nanoseconds. */
final class HostCpu {
    private static final long TICK_NANOS = 10_000_000L; // USER_HZ is 100 on every Linux ABI we run on

    private HostCpu() {}

    static long of(long pid) {
        try {
            String stat = Files.readString(Path.of("/proc/" + pid + "/stat"));
            // comm (field 2) may contain spaces and parentheses: fields after it start behind the last ')'
            String[] f = stat.substring(stat.lastIndexOf(')') + 2).split(" ");
            return (Long.parseLong(f[11]) + Long.parseLong(f[12])) * TICK_NANOS; // utime, stime: fields 14, 15
        } catch (IOException | RuntimeException e) {
            return -1;
        }
    }

    static long self() {
        return of(ProcessHandle.current().pid());
    }
}
