// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Path;

/**
 * Opens the clean image {@code args[0]} writable, then sets its dirty bit on disk as another program would (a live
 * migration's source that wrote it with lazy refcounts) and reads it again ({@link Qcow2Image#refresh}), which
 * rebuilds its refcounts; then writes 4 MiB and flushes. Run by Qcow2DirtyRepairFailureTest in a child process under
 * strace, which fails the write that clears the dirty bit. Prints {@code refresh} before the refresh, {@code refresh
 * failed: ...} when it failed, then {@code writes accepted} or {@code writes refused: ...}.
 */
public final class DirtyRepairMain {
    static final int PATTERN = 0x5d;
    static final long AT = 8L << 20;
    static final int LENGTH = 4 << 20;

    private DirtyRepairMain() {}

    public static void main(String[] args) throws Exception {
        Path img = Path.of(args[0]);
        try (Qcow2Image q = Qcow2Image.open(img, false)) {
            try (RandomAccessFile f = new RandomAccessFile(img.toFile(), "rw")) {
                f.seek(Qcow2Header.OFF_INCOMPATIBLE + 7);
                int b = f.read();
                f.seek(Qcow2Header.OFF_INCOMPATIBLE + 7);
                f.write(b | (int) Qcow2Header.INCOMPAT_DIRTY);
                f.getFD().sync();
            }
            System.out.println("refresh");
            System.out.flush();
            try {
                q.refresh();
            } catch (IOException e) {
                System.out.println("refresh failed: " + e.getMessage());
            }
            try {
                Qcow2ImageTest.write(q, AT, Qcow2ImageTest.fill(LENGTH, PATTERN));
                q.flush();
                System.out.println("writes accepted");
            } catch (IOException e) {
                System.out.println("writes refused: " + e.getMessage());
            }
        }
        System.out.println("done");
    }
}
