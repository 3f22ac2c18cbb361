// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import java.nio.file.Path;
import java.util.zip.DataFormatException;
import java.util.zip.Inflater;

/**
 * The compressed clusters of one image: where the deflate stream of a compressed L2 entry lies in the file
 * ({@link #host}, {@link #bytes}), and its inflation into a whole cluster ({@link #inflate}). iovirt only reads
 * compressed clusters; a write turns one into a normal cluster ({@link Qcow2Image} copies it out and frees the
 * compressed range after the next flush).
 *
 * <p>Takes no lock and needs none: it only reads the file, and each thread inflates into its own buffers, so a
 * compressed cluster read on many queue threads at once never serializes. The image calls it both lock-free (reads)
 * and under its metadata lock (copy-on-write, discard, the refcount rebuild's walk).
 */
final class CompressedClusters {
    private final Path path;
    private final Fd fd;
    private final int align;
    private final long clusterSize;
    /** First bit of the entry's sector count: the host offset is the {@code x} bits below it (the spec's x). */
    private final int x;

    private final ThreadLocal<Scratch> scratch;

    /**
     * Per-thread decompression state: the last compressed cluster inflated, by its L2 entry, and the native buffer
     * its compressed bytes are read into (aligned for O_DIRECT; grown, never shrunk, freed with the thread's
     * scratch by the GC), read by the inflater in place through {@code inView}. A read opened and closed an arena
     * for that buffer each time.
     */
    private static final class Scratch {
        final Inflater inflater = new Inflater(true);
        final byte[] out;
        MemorySegment in = MemorySegment.NULL;
        ByteBuffer inView;
        long key = -1;

        Scratch(int clusterSize) {
            out = new byte[clusterSize];
        }
    }

    /**
     * @param fd          the image's file, read in units of {@code align} (its O_DIRECT alignment, or 1)
     * @param clusterBits the image's cluster_bits
     */
    CompressedClusters(Path path, Fd fd, int align, int clusterBits) {
        this.path = path;
        this.fd = fd;
        this.align = align;
        this.clusterSize = 1L << clusterBits;
        this.x = 62 - (clusterBits - 8);
        this.scratch = ThreadLocal.withInitial(() -> new Scratch((int) clusterSize));
    }

    /** File offset where the compressed data of L2 entry {@code e} starts (not sector-aligned in general). */
    long host(long e) {
        return e & ((1L << x) - 1);
    }

    /** Bytes of compressed data L2 entry {@code e} names, from {@link #host} to the end of its last sector. */
    long bytes(long e) {
        long sectors = ((e & ~Qcow2Image.OFLAG_COPIED & ~Qcow2Image.OFLAG_COMPRESSED) >>> x) + 1;
        return sectors * 512 - (host(e) & 511);
    }

    /**
     * Inflates the compressed cluster of L2 entry {@code e} (raw deflate), cached per thread: the array returned is
     * this thread's, valid until its next call.
     */
    byte[] inflate(long e) throws IOException {
        Scratch s = scratch.get();
        if (s.key == e) {
            return s.out;
        }
        long host = host(e);
        int len = (int) bytes(e);
        // the whole blocks around the data: an O_DIRECT read starts and ends on block boundaries
        long lo = host & -align;
        long window = ((host + len + align - 1) & -align) - lo;
        if (s.in.byteSize() < window) {
            s.in = Arena.ofAuto().allocate(window, Math.max(align, FileIo.DIRECT_ALIGNMENT));
            s.inView = s.in.asByteBuffer();
        }
        try {
            long n = FileIo.readFully(fd, s.in.asSlice(0, window), lo);
            int start = (int) (host - lo);
            int got = (int) Math.max(0, Math.min(len, n - start));
            Inflater inf = s.inflater;
            inf.reset();
            inf.setInput(s.inView.clear().limit(start + got).position(start));
            int out = 0;
            while (out < clusterSize) {
                int k = inf.inflate(s.out, out, (int) clusterSize - out);
                if (k == 0 && (inf.finished() || inf.needsInput() || inf.needsDictionary())) {
                    break;
                }
                out += k;
            }
            if (out < clusterSize) {
                s.key = -1;
                throw new IOException("qcow2 image " + path + ": compressed cluster at " + host + " inflates to " + out
                        + " bytes, not " + clusterSize + " (damaged image: 'qemu-img check " + path + "')");
            }
        } catch (DataFormatException ex) {
            s.key = -1;
            throw new IOException(
                    "qcow2 image " + path + ": compressed cluster at " + host + " is not valid deflate data: "
                            + ex.getMessage(),
                    ex);
        }
        s.key = e;
        return s.out;
    }
}
