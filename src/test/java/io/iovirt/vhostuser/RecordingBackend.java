// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.memory.GuestMemory;
import io.iovirt.virtio.VirtioFeatures;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;

/**
 * The device side of protocol tests: records every call the protocol layer makes, holds a 60-byte virtio-blk-like
 * configuration space of which only byte 32 (writeback cache) is writable, and reports a stop index it was told.
 * It runs no rings: the peer under test is the protocol layer.
 */
final class RecordingBackend implements VhostUserBackend {
    static final long DEVICE_FEATURES = VirtioFeatures.VIRTIO_F_VERSION_1
            | VirtioFeatures.VIRTIO_RING_F_EVENT_IDX
            | VirtioFeatures.VIRTIO_RING_F_INDIRECT_DESC
            | VirtioFeatures.VIRTIO_F_RING_PACKED
            | (1L << 9) /* FLUSH */;
    static final int CONFIG_SIZE = 60;

    final List<String> events = new CopyOnWriteArrayList<>();
    final LinkedBlockingQueue<String> eventQueue = new LinkedBlockingQueue<>();
    final Map<Integer, VringSetup> running = new ConcurrentHashMap<>();
    final List<GuestMemory> memories = new CopyOnWriteArrayList<>();
    final byte[] config = new byte[CONFIG_SIZE];
    volatile long acked = -1;
    volatile int stopIndexOffset = 0;
    /** A queue whose stop throws (a device failing to let go of it), or -1. */
    volatile int failStopOf = -1;

    volatile int status;
    /** When set, {@link #reset} waits for it first (a device callback that does not return: a stuck stop). */
    volatile java.util.concurrent.CountDownLatch resetWaitsFor;
    /** Counted down when {@link #reset} begins (the session thread is in the device's reset). */
    final java.util.concurrent.CountDownLatch resetEntered = new java.util.concurrent.CountDownLatch(1);

    private final int queues;
    private final long extraProtocol;

    RecordingBackend(int queues) {
        this(queues, 0);
    }

    RecordingBackend(int queues, long extraProtocol) {
        this.queues = queues;
        this.extraProtocol = extraProtocol;
        config[0] = 0x00; // capacity 0x20000 sectors, little endian
        config[2] = 0x02;
        config[32] = 1; // writeback
    }

    private void record(String e) {
        events.add(e);
        eventQueue.add(e);
    }

    /** Waits for the next event that starts with {@code prefix}, skipping others. */
    String await(String prefix) throws InterruptedException {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(20);
        while (System.nanoTime() < deadline) {
            String e = eventQueue.poll(100, TimeUnit.MILLISECONDS);
            if (e != null && e.startsWith(prefix)) {
                return e;
            }
        }
        throw new AssertionError("no '" + prefix + "' event; saw " + events);
    }

    List<String> snapshot() {
        return Collections.unmodifiableList(new ArrayList<>(events));
    }

    @Override
    public long features() {
        return DEVICE_FEATURES;
    }

    @Override
    public long protocolFeatures() {
        return extraProtocol;
    }

    @Override
    public int queueCount() {
        return queues;
    }

    @Override
    public int maxQueueSize() {
        return 256;
    }

    @Override
    public void setFeatures(long features) {
        acked = features;
        record("setFeatures 0x" + Long.toHexString(features));
    }

    @Override
    public byte[] readConfig(int offset, int size) throws BackendException {
        if (offset + size > CONFIG_SIZE) {
            throw new BackendException("config read " + offset + "+" + size + " past " + CONFIG_SIZE);
        }
        record("readConfig " + offset + "+" + size);
        byte[] out = new byte[size];
        System.arraycopy(config, offset, out, 0, size);
        return out;
    }

    @Override
    public void writeConfig(int offset, byte[] data, boolean migration) throws BackendException {
        if (!migration && (offset != 32 || data.length != 1)) {
            throw new BackendException("only the writeback byte is writable");
        }
        if (offset + data.length
                > CONFIG_SIZE) { // the handler bounds SET_CONFIG by 256 bytes, the device by its own size
            throw new BackendException("config write " + offset + "+" + data.length + " past " + CONFIG_SIZE);
        }
        System.arraycopy(data, 0, config, offset, data.length);
        record("writeConfig " + offset + "+" + data.length);
    }

    @Override
    public void queueStarted(int index, VringSetup setup) {
        running.put(index, setup);
        record("queueStarted " + index);
    }

    @Override
    public int queueStopped(int index) {
        VringSetup s = running.remove(index);
        record("queueStopped " + index);
        if (index == failStopOf) {
            throw new IllegalStateException("test: the device failed to stop queue " + index);
        }
        return s == null ? -1 : s.base() + stopIndexOffset;
    }

    @Override
    public void memoryChanged(GuestMemory memory) {
        memories.add(memory);
        record("memoryChanged " + memory.regionCount());
    }

    @Override
    public void setStatus(int status) {
        this.status = status;
        record("setStatus " + status);
    }

    @Override
    public void reset() {
        resetEntered.countDown();
        java.util.concurrent.CountDownLatch wait = resetWaitsFor;
        if (wait != null) {
            try {
                wait.await();
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        config[32] = 1;
        record("reset");
    }

    @Override
    public void sendRarp(byte[] mac) {
        record(String.format("rarp %02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]));
    }

    @Override
    public void setMtu(int mtu) {
        record("mtu " + mtu);
    }
}
