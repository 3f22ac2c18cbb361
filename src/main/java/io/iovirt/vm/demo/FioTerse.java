// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm.demo;

/**
 * One job's result in fio's terse (--minimal, version 3) format, run with {@code --percentile_list=50:99}:
 * semicolon-separated; read fields from 6, write fields from 47, completion-latency percentiles as "p%=usec".
 *
 * @param runtimeMillis how long the job did I/O in that direction
 */
record FioTerse(long ios, double iops, long p50Micros, long p99Micros, long runtimeMillis) {
    private static final int READ_KB = 5;
    private static final int READ_IOPS = 7;
    private static final int READ_RUNTIME = 8;
    private static final int READ_P50 = 17;
    private static final int WRITE_KB = 46;
    private static final int WRITE_IOPS = 48;
    private static final int WRITE_RUNTIME = 49;
    private static final int WRITE_P50 = 58;

    static FioTerse parse(String line, boolean write, int blockSize) {
        String[] f = line.trim().split(";");
        if (f.length < 60 || !f[0].equals("3")) {
            throw new IllegalArgumentException("not fio terse v3 output: " + abbreviate(line));
        }
        int kb = write ? WRITE_KB : READ_KB;
        int iops = write ? WRITE_IOPS : READ_IOPS;
        int p50 = write ? WRITE_P50 : READ_P50;
        long ios = Long.parseLong(f[kb]) * 1024 / blockSize;
        return new FioTerse(
                ios,
                Double.parseDouble(f[iops]),
                percentile(f[p50]),
                percentile(f[p50 + 1]),
                Long.parseLong(f[write ? WRITE_RUNTIME : READ_RUNTIME]));
    }

    private static long percentile(String field) {
        return Long.parseLong(field.substring(field.indexOf('=') + 1));
    }

    private static String abbreviate(String s) {
        return s.length() > 80 ? s.substring(0, 80) + "..." : s;
    }
}
