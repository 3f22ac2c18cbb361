// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static java.lang.foreign.ValueLayout.JAVA_SHORT_UNALIGNED;

import io.iovirt.linux.EventFd;
import io.iovirt.memory.GuestMemory;
import io.iovirt.memory.MemoryRegion;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.FrontendMemory;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.virtio.DriverRing;
import io.iovirt.virtio.PackedDriverRing;
import io.iovirt.virtio.SplitDriverRing;
import io.iovirt.virtio.VirtioFeatures;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * A virtio-net driver without a VM for the device tests: connects to the port's socket with the project's vhost-user
 * frontend, shares a memfd as guest RAM, sets up rx/tx queue pairs (split or packed) and moves frames — or, as a
 * hostile driver, whatever bytes a test wants. Single-threaded: tests call it from one thread.
 */
final class NetDriver implements AutoCloseable {
    static final Duration TIMEOUT = Duration.ofSeconds(20);
    static final long RAM_SIZE = 16 << 20;
    static final int QUEUE_SIZE = 256;

    final VhostUserFrontend fe;
    final FrontendMemory ram;
    final GuestMemory mem;
    final long features;
    final int pairs;
    final int headerSize = VirtioNet.HDR_SIZE;
    private final DriverRing[] rings;
    private final EventFd[] kicks;
    private final EventFd[] calls;
    private final List<Map<Integer, long[]>> buffers = new ArrayList<>(); // per queue: id -> {gpa, len, ...}
    private final List<List<Integer>> madeAvailable = new ArrayList<>(); // per queue: heads in avail order
    private final List<List<Integer>> returned = new ArrayList<>(); // per queue: used ids in used order
    private long next;

    /**
     * Negotiates {@code wanted} (intersected with what the device offers; VERSION_1 always) and starts
     * {@code pairs} queue pairs.
     */
    NetDriver(Path socket, long wanted, int pairs) throws IOException {
        this(socket, wanted, pairs, true);
    }

    /** With {@code sealed} false the memfd can be truncated under the backend, as a hostile frontend would. */
    NetDriver(Path socket, long wanted, int pairs, boolean sealed) throws IOException {
        this.fe = VhostUserFrontend.connect(socket, TIMEOUT);
        this.ram = FrontendMemory.allocate(0, RAM_SIZE, sealed);
        this.mem = GuestMemory.of(List.of(new MemoryRegion(0, RAM_SIZE, ram.userAddr(), 0, ram.segment(), null)));
        this.pairs = pairs;
        long offered = fe.getFeatures();
        this.features =
                (offered & (wanted | VirtioFeatures.VIRTIO_F_VERSION_1)) | Features.VHOST_USER_F_PROTOCOL_FEATURES;
        fe.setProtocolFeatures(fe.getProtocolFeatures());
        fe.setOwner();
        fe.setFeatures(features);
        fe.setMemTable(List.of(ram.descriptor()));
        boolean packed = (features & VirtioFeatures.VIRTIO_F_RING_PACKED) != 0;
        boolean eventIdx = (features & VirtioFeatures.VIRTIO_RING_F_EVENT_IDX) != 0;
        int queues = 2 * pairs;
        rings = new DriverRing[queues];
        kicks = new EventFd[queues];
        calls = new EventFd[queues];
        next = 0x1000;
        for (int q = 0; q < queues; q++) {
            long bytes = packed ? PackedDriverRing.bytesNeeded(QUEUE_SIZE) : SplitDriverRing.bytesNeeded(QUEUE_SIZE);
            long base = alloc(bytes, 4096);
            rings[q] = packed
                    ? PackedDriverRing.create(mem, base, QUEUE_SIZE, eventIdx)
                    : SplitDriverRing.create(mem, base, QUEUE_SIZE, eventIdx)
                            .inOrder((features & VirtioFeatures.VIRTIO_F_IN_ORDER) != 0);
            kicks[q] = EventFd.create(true);
            calls[q] = EventFd.create(true);
            buffers.add(new HashMap<>());
            madeAvailable.add(new ArrayList<>());
            returned.add(new ArrayList<>());
            DriverRing r = rings[q];
            fe.setVringNum(q, QUEUE_SIZE);
            fe.setVringBase(q, packed ? 0x8000 | 0x8000 << 16 : 0);
            fe.setVringAddr(
                    q,
                    ram.userAddrOf(r.descAddr()),
                    ram.userAddrOf(r.deviceAreaAddr()),
                    ram.userAddrOf(r.driverAreaAddr()));
            fe.setVringKick(q, kicks[q]);
            fe.setVringCall(q, calls[q]);
            fe.setVringEnable(q, true);
        }
    }

    long alloc(long bytes, int align) {
        long gpa = (next + align - 1) & -align;
        next = gpa + bytes;
        if (next > RAM_SIZE) {
            throw new IllegalStateException("test guest RAM exhausted");
        }
        return gpa;
    }

    boolean negotiated(long feature) {
        return (features & feature) == feature;
    }

    /** Posts {@code count} receive buffers of {@code size} bytes (one descriptor each) on pair {@code pair}. */
    void postRx(int pair, int size, int count) throws IOException {
        int q = 2 * pair;
        for (int i = 0; i < count; i++) {
            long gpa = alloc(size, 64);
            add(q, new long[] {gpa}, new int[] {size}, new boolean[] {true});
        }
        kick(q);
    }

    /** Posts one receive chain made of several device-writable buffers of the given sizes. */
    void postRxChain(int pair, int... sizes) throws IOException {
        long[] addrs = new long[sizes.length];
        boolean[] w = new boolean[sizes.length];
        for (int i = 0; i < sizes.length; i++) {
            addrs[i] = alloc(sizes[i], 8);
            w[i] = true;
        }
        add(2 * pair, addrs, sizes, w);
        kick(2 * pair);
    }

    private void add(int q, long[] addrs, int[] lens, boolean[] writable) {
        int id = rings[q].add(addrs, lens, writable, addrs.length, DriverRing.NO_INDIRECT);
        if (id < 0) {
            throw new IllegalStateException("queue " + q + " is full");
        }
        long[] rec = new long[2 * addrs.length];
        for (int i = 0; i < addrs.length; i++) {
            rec[2 * i] = addrs[i];
            rec[2 * i + 1] = lens[i];
        }
        buffers.get(q).put(id, rec);
        madeAvailable.get(q).add(id);
    }

    /** Heads made available on queue {@code q} through this driver's senders and posters, in ring order. */
    List<Integer> madeAvailable(int q) {
        return madeAvailable.get(q);
    }

    /** Ids the device returned on queue {@code q}, in used-ring order (as far as this driver has read it). */
    List<Integer> returned(int q) {
        return returned.get(q);
    }

    /** A hostile request of any shape on queue {@code q} (indirect: a table address, or NO_INDIRECT). */
    int addRaw(int q, long[] addrs, int[] lens, boolean[] writable, long indirect) throws IOException {
        int id = addRawNoKick(q, addrs, lens, writable, indirect);
        kick(q);
        return id;
    }

    int addRawNoKick(int q, long[] addrs, int[] lens, boolean[] writable, long indirect) {
        int id = rings[q].add(addrs, lens, writable, addrs.length, indirect);
        if (id < 0) {
            throw new IllegalStateException("queue " + q + " is full");
        }
        return id;
    }

    void kickQueue(int q) throws IOException {
        kicks[q].signal();
    }

    DriverRing ring(int q) {
        return rings[q];
    }

    EventFd call(int q) {
        return calls[q];
    }

    /** Queue {@code q}'s kick eventfd, e.g. to send again (SET_VRING_KICK). */
    EventFd kickFd(int q) {
        return kicks[q];
    }

    /** Takes every rx frame that arrives until none has for a moment (flooded learning frames). */
    void drainRx(int pair) throws InterruptedException {
        while (pollRx(pair, Duration.ofMillis(300)) != null) {
            // discard
        }
    }

    /** Replaces queue {@code q}'s call descriptor (SET_VRING_CALL while it runs). */
    void replaceCall(int q, EventFd call) throws IOException {
        fe.setVringCall(q, call);
    }

    private void kick(int q) throws IOException {
        if (rings[q].kickNeeded()) {
            kicks[q].signal();
        }
    }

    /** Sends a frame with an all-zero header (no offloads), header and frame in one buffer. */
    void send(int pair, byte[] frame) throws IOException {
        byte[] b = new byte[headerSize + frame.length];
        System.arraycopy(frame, 0, b, headerSize, frame.length);
        sendRaw(pair, b, b.length);
    }

    /**
     * Makes a frame (all-zero header, one buffer) available on the tx queue without kicking: several queued and then
     * one {@link #kickTx} reach the device as one batch, as a driver's burst does.
     */
    void queue(int pair, byte[] frame) {
        byte[] b = new byte[headerSize + frame.length];
        System.arraycopy(frame, 0, b, headerSize, frame.length);
        long gpa = alloc(b.length, 8);
        MemorySegment.copy(b, 0, ram.segment(), JAVA_BYTE, gpa, b.length);
        add(2 * pair + 1, new long[] {gpa}, new int[] {b.length}, new boolean[] {false});
    }

    /** Kicks the tx queue of pair {@code pair} (after {@link #queue}). */
    void kickTx(int pair) throws IOException {
        kicks[2 * pair + 1].signal();
    }

    /**
     * Makes {@code bytes} (header and frame, as the device will read them) available on the tx queue, split into
     * device-readable buffers ending at the given cut points ({@code 12, total} puts the header alone first).
     */
    void sendRaw(int pair, byte[] bytes, int... cuts) throws IOException {
        int q = 2 * pair + 1;
        long[] addrs = new long[cuts.length];
        int[] lens = new int[cuts.length];
        boolean[] writable = new boolean[cuts.length];
        int from = 0;
        for (int i = 0; i < cuts.length; i++) {
            int len = cuts[i] - from;
            long gpa = alloc(Math.max(len, 1), 8);
            MemorySegment.copy(bytes, from, ram.segment(), JAVA_BYTE, gpa, len);
            addrs[i] = gpa;
            lens[i] = len;
            from = cuts[i];
        }
        add(q, addrs, lens, writable);
        kick(q);
    }

    /** A hostile request: one device-readable buffer at any guest address (e.g. outside guest memory). */
    void sendRawAt(int pair, long gpa, int len) throws IOException {
        add(2 * pair + 1, new long[] {gpa}, new int[] {len}, new boolean[] {false});
        kick(2 * pair + 1);
    }

    /** Waits until the device has returned {@code n} more tx requests. */
    void awaitTxUsed(int pair, int n) throws InterruptedException {
        int q = 2 * pair + 1;
        int got = 0;
        long deadline = System.nanoTime() + TIMEOUT.toNanos();
        while (got < n) {
            long u = rings[q].pollUsed();
            if (u == -1) {
                if (System.nanoTime() > deadline) {
                    throw new AssertionError("tx queue " + q + ": " + got + " of " + n + " requests returned");
                }
                Thread.sleep(1);
                continue;
            }
            buffers.get(q).remove(DriverRing.usedId(u));
            returned.get(q).add(DriverRing.usedId(u));
            got++;
        }
    }

    /**
     * Waits until the device has returned every tx request made available on pair {@code pair}: each frame sent is
     * then in every receive ring it went to (a port publishes those before the sender's tx used entries).
     */
    void awaitTxDone(int pair) throws InterruptedException {
        int q = 2 * pair + 1;
        int left = buffers.get(q).size();
        if (left > 0) {
            awaitTxUsed(pair, left);
        }
    }

    /** A used receive buffer: the length the device reported and the bytes it wrote (across the chain). */
    record Rx(int id, int length, byte[] data) {
        int numBuffers() {
            return Short.toUnsignedInt(
                    MemorySegment.ofArray(data).get(JAVA_SHORT_UNALIGNED, VirtioNet.HDR_NUM_BUFFERS));
        }
    }

    /** The next used rx buffer on pair {@code pair}, or null when none comes within {@code timeout}. */
    Rx pollRx(int pair, Duration timeout) throws InterruptedException {
        int q = 2 * pair;
        long deadline = System.nanoTime() + timeout.toNanos();
        while (true) {
            long u = rings[q].pollUsed();
            if (u != -1) {
                int id = DriverRing.usedId(u);
                int len = (int) DriverRing.usedLen(u);
                long[] rec = buffers.get(q).remove(id);
                returned.get(q).add(id);
                ByteArrayOutputStream out = new ByteArrayOutputStream();
                int left = len;
                for (int i = 0; i < rec.length / 2 && left > 0; i++) {
                    int k = (int) Math.min(left, rec[2 * i + 1]);
                    byte[] part = new byte[k];
                    MemorySegment.copy(ram.segment(), JAVA_BYTE, rec[2 * i], part, 0, k);
                    out.write(part, 0, k);
                    left -= k;
                }
                return new Rx(id, len, out.toByteArray());
            }
            if (System.nanoTime() > deadline) {
                return null;
            }
            Thread.sleep(1);
        }
    }

    /** The next frame (header stripped, MRG_RXBUF buffers joined); fails when none arrives in time. */
    byte[] receive(int pair) throws InterruptedException {
        Rx first = pollRx(pair, TIMEOUT);
        if (first == null) {
            throw new AssertionError("no frame on rx queue " + 2 * pair);
        }
        int n = negotiated(VirtioNet.F_MRG_RXBUF) ? first.numBuffers() : 1;
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(first.data(), headerSize, first.data().length - headerSize);
        for (int i = 1; i < n; i++) {
            Rx more = pollRx(pair, TIMEOUT);
            if (more == null) {
                throw new AssertionError("buffer " + (i + 1) + " of " + n + " missing");
            }
            out.write(more.data(), 0, more.data().length);
        }
        return out.toByteArray();
    }

    @Override
    public void close() {
        fe.close();
        for (EventFd e : kicks) {
            if (e != null) {
                e.close();
            }
        }
        for (EventFd e : calls) {
            if (e != null) {
                e.close();
            }
        }
        ram.close();
    }
}
