// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.nio.file.StandardOpenOption;

/**
 * Replaces a file as a whole, atomically and durably: a new file beside it (same directory, so the rename stays on
 * one file system), written and fsynced, renamed over it, the directory fsynced — so a crash or a power cut leaves
 * the old file or the new one, never a mix or an empty file. Used for what iovirt writes that someone relies on
 * after a crash: {@code host migrate}'s rewritten files and the daemon's {@code --state} file.
 */
public final class AtomicFile {
    /** Between the target's name and the writer's pid and a number: {@code NAME.iovirt-tmp-PID-DIGITS}. */
    private static final String TEMP = ".iovirt-tmp-";

    private AtomicFile() {}

    /** What to do to the new file before its data is written (its mode, owner): a failure leaves the old file. */
    @FunctionalInterface
    public interface Prepare {
        void prepare(Path temp) throws IOException;
    }

    /**
     * Replaces {@code target} (through a symbolic link: the file it points to) with {@code data}.
     *
     * @param prepare run on the new file, created with the umask's mode, before the data is written (null: none)
     * @throws IOException nothing was replaced (the new file is removed); the message names the step
     */
    public static void replace(Path target, byte[] data, Prepare prepare) throws IOException {
        Path real = Files.exists(target) ? target.toRealPath() : target.toAbsolutePath();
        Path tmp = real.resolveSibling(real.getFileName() + TEMP
                + ProcessHandle.current().pid() + "-" + Long.toUnsignedString(System.nanoTime()));
        try {
            try (FileChannel ch = FileChannel.open(tmp, StandardOpenOption.CREATE_NEW, StandardOpenOption.WRITE)) {
                if (prepare != null) {
                    prepare.prepare(tmp);
                }
                ByteBuffer buf = ByteBuffer.wrap(data);
                while (buf.hasRemaining()) {
                    // a regular file's write returns 0 only on a broken file system: looping would spin for ever
                    if (ch.write(buf) == 0) {
                        throw new IOException("writing " + tmp + " made no progress with " + buf.remaining()
                                + " bytes left (file system full or broken?)");
                    }
                }
                ch.force(true);
            }
            Files.move(tmp, real, StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING);
            try (FileChannel dir = FileChannel.open(real.getParent(), StandardOpenOption.READ)) {
                dir.force(true); // the rename itself survives a power cut only once the directory is synced
            }
        } finally {
            Files.deleteIfExists(tmp);
        }
    }

    /**
     * True for a temporary file {@link #replace} left beside {@code target} when its process died mid-way: exactly
     * {@code NAME.iovirt-tmp-PID-DIGITS}, so that neither another file's ({@code NAME.failed.iovirt-tmp-...}) nor a
     * file someone named alike is taken for one.
     */
    public static boolean isLeftover(Path target, Path file) {
        String name = file.getFileName().toString();
        String prefix = target.getFileName() + TEMP;
        return name.startsWith(prefix) && name.substring(prefix.length()).matches("[0-9]+-[0-9]+");
    }
}
