// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.HashSet;
import java.util.Set;

/**
 * Writes a cpio archive in the "newc" format (the one the kernel unpacks as initramfs), owner root, mtime 0.
 * Parent directories are emitted before the first entry below them.
 */
public final class CpioWriter implements AutoCloseable {

    private static final int S_IFREG = 0100000;
    private static final int S_IFDIR = 0040000;
    private static final long MAX_FILE = 0xFFFF_FFFFL;

    private final OutputStream out;
    private final Set<String> dirs = new HashSet<>();
    private long written;
    private int nextIno = 1;
    private boolean finished;

    public CpioWriter(OutputStream out) {
        this.out = out;
    }

    /** Adds a regular file; {@code path} is relative to the archive root ("run.sh", "root/data.bin"). */
    public void file(String path, byte[] content, int permissions) throws IOException {
        String name = normalize(path);
        parents(name);
        entry(name, S_IFREG | (permissions & 07777), 1, content);
    }

    /** Adds a directory (and its parents) unless already added. */
    public void directory(String path) throws IOException {
        String name = normalize(path);
        parents(name);
        if (dirs.add(name)) {
            entry(name, S_IFDIR | 0755, 2, new byte[0]);
        }
    }

    /** Writes the trailer; the archive is complete after this. */
    public void finish() throws IOException {
        if (!finished) {
            entry("TRAILER!!!", 0, 1, new byte[0]);
            finished = true;
            out.flush();
        }
    }

    @Override
    public void close() throws IOException {
        finish();
        out.close();
    }

    private void parents(String name) throws IOException {
        int slash = name.lastIndexOf('/');
        if (slash > 0) {
            directory(name.substring(0, slash));
        }
    }

    private static String normalize(String path) {
        String p = path;
        while (p.startsWith("/")) {
            p = p.substring(1);
        }
        if (p.isEmpty()
                || p.endsWith("/")
                || p.contains("//")
                || p.contains("\0")
                || ("/" + p + "/").contains("/../")
                || ("/" + p + "/").contains("/./")) {
            throw new IllegalArgumentException("bad path in cpio archive: '" + path + "'");
        }
        return p;
    }

    private void entry(String name, int mode, int nlink, byte[] data) throws IOException {
        if (finished) {
            throw new IllegalStateException("archive already finished");
        }
        if (data.length > MAX_FILE) {
            throw new IllegalArgumentException(name + " is too large for a newc cpio entry");
        }
        byte[] nameBytes = (name + "\0").getBytes(StandardCharsets.UTF_8);
        StringBuilder h = new StringBuilder(110).append("070701");
        long[] fields = {
            name.equals("TRAILER!!!") ? 0 : nextIno++,
            mode,
            0,
            0,
            nlink,
            0,
            data.length,
            0,
            0,
            0,
            0,
            nameBytes.length,
            0
        };
        for (long f : fields) {
            h.append(String.format("%08x", f));
        }
        write(h.toString().getBytes(StandardCharsets.US_ASCII));
        write(nameBytes);
        pad();
        write(data);
        pad();
    }

    private void write(byte[] b) throws IOException {
        out.write(b);
        written += b.length;
    }

    private void pad() throws IOException {
        while ((written & 3) != 0) {
            out.write(0);
            written++;
        }
    }
}
