// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.HEADER_BYTES;
import static io.iovirt.devices.blk.BlkRequests.T_FLUSH;
import static io.iovirt.devices.blk.BlkRequests.T_IN;
import static io.iovirt.devices.blk.BlkRequests.T_OUT;
import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_INT_UNALIGNED;
import static java.lang.foreign.ValueLayout.JAVA_LONG_UNALIGNED;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.FrontendMemory;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.VirtioFeatures;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;

/**
 * A minimal vhost-user-blk driver for tests: one split queue in a (sparse) memfd, requests written by hand, through
 * a real vhost-user connection ({@link VhostUserFrontend}).
 */
public final class BlkTestDriver implements AutoCloseable {
    /** How long a reply or a request's completion is waited for. */
    public static final Duration TIMEOUT = Duration.ofSeconds(20);

    public static final int QSIZE = 64;

    public final VhostUserFrontend fe;
    public final FrontendMemory ram;
    public final GuestMemory mem;
    public final SplitDriverRing ring;
    public final EventFd kick = EventFd.create(true);
    public final EventFd call;
    public long next = 0x10000;

    /** What a test does to the frontend's descriptors after the backend adopted them, before the queue starts. */
    @FunctionalInterface
    public interface BeforeStart {
        void run() throws IOException;
    }

    public BlkTestDriver(Path socket, long ramBytes, EventFd call) throws IOException {
        this(socket, ramBytes, call, null, () -> {});
    }

    /**
     * With {@code err} (null: none) as the queue's err eventfd, and {@code beforeStart} run before SET_VRING_KICK.
     */
    public BlkTestDriver(Path socket, long ramBytes, EventFd call, EventFd err, BeforeStart beforeStart)
            throws IOException {
        this(socket, ramBytes, call, err, beforeStart, true);
    }

    /**
     * As above; {@code flush}: negotiates VIRTIO_BLK_F_FLUSH, as Linux's driver does (false: as firmware that does
     * not, whose writes the device must make durable itself).
     */
    public BlkTestDriver(Path socket, long ramBytes, EventFd call, EventFd err, BeforeStart beforeStart, boolean flush)
            throws IOException {
        this.call = call;
        fe = VhostUserFrontend.connect(socket, TIMEOUT);
        ram = FrontendMemory.allocate(0, ramBytes);
        mem = GuestMemory.of(List.of(new MemoryRegion(0, ramBytes, ram.userAddr(), 0, ram.segment(), null)));
        fe.getFeatures();
        fe.setProtocolFeatures(fe.getProtocolFeatures());
        fe.setOwner();
        fe.setFeatures(VirtioFeatures.VIRTIO_F_VERSION_1
                | Features.VHOST_USER_F_PROTOCOL_FEATURES
                | (flush ? 1L << BlkRequests.F_FLUSH : 0));
        fe.setMemTable(List.of(ram.descriptor()));
        ring = SplitDriverRing.create(mem, alloc(SplitDriverRing.bytesNeeded(QSIZE), 4096), QSIZE, false);
        fe.setVringNum(0, QSIZE);
        fe.setVringBase(0, 0);
        fe.setVringAddr(
                0,
                ram.userAddrOf(ring.descAddr()),
                ram.userAddrOf(ring.deviceAreaAddr()),
                ram.userAddrOf(ring.driverAreaAddr()));
        if (err != null) {
            fe.setVringErr(0, err);
        }
        beforeStart.run();
        fe.setVringKick(0, kick);
        fe.setVringCall(0, call);
        fe.setVringEnable(0, true);
    }

    public long alloc(long bytes, int align) {
        long gpa = (next + align - 1) & -align;
        next = gpa + bytes;
        return gpa;
    }

    /** A read of {@code dataLen} bytes at sector 0 into a buffer at {@code dataGpa}; returns the status GPA. */
    public long read(long dataGpa, long dataLen) throws IOException {
        return dataRequest(T_IN, dataGpa, dataLen, true);
    }

    /** A write of the {@code dataLen} bytes at {@code dataGpa} to sector 0; returns the status GPA. */
    public long write(long dataGpa, long dataLen) throws IOException {
        return dataRequest(T_OUT, dataGpa, dataLen, false);
    }

    /** A FLUSH; returns the status GPA. */
    public long flush() throws IOException {
        return flush(ring, kick);
    }

    /** A FLUSH on the queue of {@code r}, kicked through {@code k}; returns the status GPA. */
    public long flush(SplitDriverRing r, EventFd k) throws IOException {
        long hdr = header(T_FLUSH);
        long status = status();
        r.add(
                new long[] {hdr, status},
                new int[] {HEADER_BYTES, 1},
                new boolean[] {false, true},
                2,
                DriverRing.NO_INDIRECT);
        k.signal();
        return status;
    }

    /**
     * A request of {@code type} at sector 0 with one data buffer, which the device writes when {@code deviceWrites}
     * (a read); returns the status GPA.
     */
    private long dataRequest(int type, long dataGpa, long dataLen, boolean deviceWrites) throws IOException {
        long hdr = header(type);
        long status = status();
        ring.add(
                new long[] {hdr, dataGpa, status},
                new int[] {HEADER_BYTES, (int) dataLen, 1},
                new boolean[] {false, deviceWrites, true},
                3,
                DriverRing.NO_INDIRECT);
        kick.signal();
        return status;
    }

    /** A request header of {@code type} for sector 0; returns its GPA. */
    private long header(int type) {
        long hdr = alloc(HEADER_BYTES, 16);
        ram.segment().set(JAVA_INT_UNALIGNED, hdr, type);
        ram.segment().set(JAVA_LONG_UNALIGNED, hdr + 8, 0);
        return hdr;
    }

    /** A status byte set to 0x7f (no status the device writes), so that a request left unanswered shows. */
    private long status() {
        long status = alloc(1, 1);
        ram.segment().set(JAVA_BYTE, status, (byte) 0x7f);
        return status;
    }

    public byte awaitStatus(long statusGpa) throws InterruptedException {
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (ring.pollUsed() == -1) {
            assertTrue(System.nanoTime() < deadline, "request not completed");
            Thread.sleep(1);
        }
        return ram.segment().get(JAVA_BYTE, statusGpa);
    }

    @Override
    public void close() {
        fe.close();
        kick.close();
        ram.close();
    }
}
