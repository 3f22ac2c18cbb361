package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.*;

import io.iovirt.linux.LinuxException;
import io.iovirt.storage.RawImage;
import io.iovirt.virtio.DescriptorChain;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;

/**
 * Executes virtio-blk requests of one queue against the image. One instance per queue thread: its header copy,
 * iovec array and bounce buffer are reused, so a request allocates nothing here.
 *
 * <p>Every field of a request is guest-controlled. The header is copied out of guest memory before it is looked at
 * (the guest could change it under us), then the type, sector, lengths and segment counts are checked against the
 * image and our advertised limits before any I/O. A request that fails a check completes with
 * {@code VIRTIO_BLK_S_IOERR} or {@code S_UNSUPP}; only a request with no room for a status byte cannot be answered
 * and is reported to the caller as a protocol violation.
 */
final class BlkQueueHandler implements AutoCloseable {
    private static final ValueLayout.OfInt LE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);
    private static final ValueLayout.OfLong LE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.LITTLE_ENDIAN);

    /** A request the device cannot even answer (no writable status byte). */
    static final class UnanswerableRequest extends Exception {
        UnanswerableRequest(String message) {
            super(message, null, false, false);
        }
    }

    private final RawImage image;
    private final BlkLimits limits;
    private final BlkStats stats;
    private final byte[] serial;
    private final Arena arena = Arena.ofShared(); // built on the control thread, used and closed on the queue thread
    private final MemorySegment header = arena.allocate(HEADER_BYTES);
    private final MemorySegment discardSegment = arena.allocate(DISCARD_SEGMENT_BYTES);
    private final MemorySegment status = arena.allocate(1);
    private final RawImage.IoContext io;
    /** Why the last request got a non-OK status, for the caller's rate-limited log line. */
    private String lastError;

    BlkQueueHandler(RawImage image, BlkLimits limits, byte[] serial, BlkStats stats) {
        this.image = image;
        this.limits = limits;
        this.serial = serial;
        this.stats = stats;
        this.io = image.newContext(limits.segMax(), limits.bounceBytes());
    }

    /** The reason of the last failed request (null after a successful one). */
    String lastError() {
        return lastError;
    }

    /**
     * Executes one request and writes its status byte.
     *
     * @return bytes written into the chain's writable buffers (data + status), for the used ring
     */
    long process(DescriptorChain chain) throws UnanswerableRequest {
        long writable = chain.writableBytes();
        if (writable < 1) {
            throw new UnanswerableRequest("request " + chain.id() + " has no device-writable byte for its status");
        }
        lastError = null;
        byte st;
        long dataWritten = 0;
        if (chain.readableBytes() < HEADER_BYTES || chain.copyFromReadable(0, header) != HEADER_BYTES) {
            st = fail("request header is " + chain.readableBytes() + " bytes, needs " + HEADER_BYTES);
        } else {
            int type = header.get(LE32, 0);
            long sector = header.get(LE64, 8);
            try {
                switch (type) {
                    case T_IN -> {
                        dataWritten = writable - 1;
                        st = read(chain, sector, dataWritten);
                        if (st != S_OK) {
                            dataWritten = 0;
                        }
                    }
                    case T_OUT -> st = write(chain, sector);
                    case T_FLUSH -> st = flush();
                    case T_GET_ID -> {
                        dataWritten = Math.min(ID_BYTES, writable - 1);
                        chain.copyToWritable(0, MemorySegment.ofArray(serial).asSlice(0, dataWritten));
                        st = S_OK;
                    }
                    case T_DISCARD, T_WRITE_ZEROES -> st = discardOrZero(chain, type == T_WRITE_ZEROES);
                    default -> {
                        st = S_UNSUPP;
                        lastError = "unsupported request type " + Integer.toUnsignedString(type);
                    }
                }
            } catch (IOException e) {
                stats.ioErrors.increment();
                st = fail("I/O error: " + e.getMessage());
                dataWritten = 0;
            }
        }
        status.set(ValueLayout.JAVA_BYTE, 0, st);
        chain.copyToWritable(writable - 1, status);
        return dataWritten + 1;
    }

    private byte read(DescriptorChain chain, long sector, long len) throws IOException {
        byte st = checkData(sector, len, "read");
        if (st != S_OK) {
            return st;
        }
        io.clear();
        long left = len;
        for (int i = chain.readableCount(); i < chain.count() && left > 0; i++) {
            MemorySegment s = chain.segment(i);
            long n = Math.min(left, s.byteSize());
            if (!io.add(n == s.byteSize() ? s : s.asSlice(0, n))) {
                return fail("read has more than " + limits.segMax() + " segments");
            }
            left -= n;
        }
        io.read(sector << SECTOR_SHIFT);
        stats.reads.increment();
        stats.bytesRead.add(len);
        return S_OK;
    }

    private byte write(DescriptorChain chain, long sector) throws IOException {
        if (image.readOnly()) {
            return fail("write to a read-only disk");
        }
        long len = chain.readableBytes() - HEADER_BYTES;
        byte st = checkData(sector, len, "write");
        if (st != S_OK) {
            return st;
        }
        io.clear();
        long skip = HEADER_BYTES; // the header may share a buffer with data (the spec allows any framing)
        for (int i = 0; i < chain.readableCount(); i++) {
            MemorySegment s = chain.segment(i);
            if (skip >= s.byteSize()) {
                skip -= s.byteSize();
                continue;
            }
            if (!io.add(skip == 0 ? s : s.asSlice(skip))) {
                return fail("write has more than " + limits.segMax() + " segments");
            }
            skip = 0;
        }
        io.write(sector << SECTOR_SHIFT);
        stats.writes.increment();
        stats.bytesWritten.add(len);
        return S_OK;
    }

    private byte flush() throws LinuxException {
        if (!image.readOnly()) {
            image.flush();
        }
        stats.flushes.increment();
        return S_OK;
    }

    private byte discardOrZero(DescriptorChain chain, boolean zeroes) throws IOException {
        if (image.readOnly()) {
            return fail((zeroes ? "write-zeroes" : "discard") + " on a read-only disk");
        }
        long len = chain.readableBytes() - HEADER_BYTES;
        if (len <= 0 || len % DISCARD_SEGMENT_BYTES != 0) {
            return fail("discard/write-zeroes payload of " + len + " bytes is not a whole number of 16-byte segments");
        }
        long segments = len / DISCARD_SEGMENT_BYTES;
        if (segments > limits.maxDiscardSegments()) {
            return fail(segments + " discard/write-zeroes segments, limit " + limits.maxDiscardSegments());
        }
        // Validate every segment before touching the image: a request is all or nothing where we can make it so.
        for (int pass = 0; pass < 2; pass++) {
            for (long k = 0; k < segments; k++) {
                chain.copyFromReadable(HEADER_BYTES + k * DISCARD_SEGMENT_BYTES, discardSegment);
                long sector = discardSegment.get(LE64, 0);
                long sectors = Integer.toUnsignedLong(discardSegment.get(LE32, 8));
                int flags = discardSegment.get(LE32, 12);
                int allowed = zeroes ? WRITE_ZEROES_FLAG_UNMAP : 0;
                if ((flags & ~allowed) != 0) {
                    lastError = "discard/write-zeroes segment flags 0x" + Integer.toHexString(flags) + " not supported";
                    return S_UNSUPP;
                }
                if (sectors > limits.maxDiscardSectors()) {
                    return fail(sectors + " sectors in one discard/write-zeroes segment, limit " + limits.maxDiscardSectors());
                }
                byte st = checkData(sector, sectors << SECTOR_SHIFT, zeroes ? "write-zeroes" : "discard");
                if (st != S_OK) {
                    return st;
                }
                if (pass == 1) {
                    long off = sector << SECTOR_SHIFT;
                    long n = sectors << SECTOR_SHIFT;
                    if (zeroes) {
                        image.writeZeroes(off, n, (flags & WRITE_ZEROES_FLAG_UNMAP) != 0);
                    } else {
                        image.discard(off, n);
                    }
                }
            }
        }
        stats.discards.increment();
        return S_OK;
    }

    /** Checks a data range: whole sectors, inside the image, aligned to the advertised block size. */
    private byte checkData(long sector, long len, String what) {
        long capacitySectors = image.size() >>> SECTOR_SHIFT;
        if (len < 0 || (len & 511) != 0) {
            return fail(what + " of " + len + " bytes is not a multiple of 512");
        }
        long sectors = len >>> SECTOR_SHIFT;
        if (Long.compareUnsigned(sector, capacitySectors) > 0 || sectors > capacitySectors - sector) {
            return fail(what + " of " + sectors + " sectors at sector " + Long.toUnsignedString(sector)
                    + " is beyond the disk's " + capacitySectors + " sectors");
        }
        int blockSectors = image.blockSize() >>> SECTOR_SHIFT;
        if (image.direct() && ((sector | sectors) & (blockSectors - 1)) != 0) {
            return fail(what + " at sector " + sector + " is not aligned to the " + image.blockSize() + "-byte block size");
        }
        return S_OK;
    }

    private byte fail(String why) {
        lastError = why;
        stats.requestErrors.increment();
        return S_IOERR;
    }

    @Override
    public void close() {
        io.close();
        arena.close();
    }
}
