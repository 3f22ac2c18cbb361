// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.lang.invoke.VarHandle;
import java.nio.ByteOrder;
import java.util.Iterator;
import java.util.concurrent.ConcurrentHashMap;

/**
 * A bounded cache of qcow2 metadata clusters (L2 tables or refcount blocks), keyed by their file offset, holding
 * each cluster's bytes as they are on disk (big-endian). Lookups are lock-free, so reads of allocated clusters on
 * many queue threads never serialize; loading, modifying and evicting happen under the image's metadata lock.
 * Eviction is CLOCK (a referenced bit per table); a dirty table is never dropped before the image has written it
 * in the metadata order (the image flushes first).
 */
final class MetaCache {
    private static final VarHandle BE64 =
            ValueLayout.JAVA_LONG.withOrder(ByteOrder.BIG_ENDIAN).varHandle();

    /** One cached metadata cluster. */
    static final class Table {
        final long offset;
        final MemorySegment data;
        volatile boolean referenced = true;
        /** For an L2 table: the L1 index whose lookup slot points here, or -1. */
        volatile int slot = -1;
        /** Dirty byte range [dirtyLo, dirtyHi), written at the next metadata flush; lo >= hi when clean. */
        int dirtyLo = Integer.MAX_VALUE;

        int dirtyHi;

        Table(long offset, MemorySegment data) {
            this.offset = offset;
            this.data = data;
        }

        long entry(int index) {
            return (long) BE64.getVolatile(data, (long) index * 8);
        }

        void setEntry(int index, long value) {
            BE64.setVolatile(data, (long) index * 8, value);
            markDirty(index * 8, index * 8 + 8);
        }

        void markDirty(int lo, int hi) {
            dirtyLo = Math.min(dirtyLo, lo);
            dirtyHi = Math.max(dirtyHi, hi);
        }

        boolean dirty() {
            return dirtyLo < dirtyHi;
        }

        void clean() {
            dirtyLo = Integer.MAX_VALUE;
            dirtyHi = 0;
        }
    }

    private final ConcurrentHashMap<Long, Table> tables = new ConcurrentHashMap<>();
    private final int capacity;
    private final java.util.function.Consumer<Table> evicted;
    private Iterator<Table> hand;

    /**
     * @param capacity tables kept (at least 2)
     * @param evicted  told of each table dropped (the image clears its index of it)
     */
    MetaCache(int capacity, java.util.function.Consumer<Table> evicted) {
        this.capacity = Math.max(2, capacity);
        this.evicted = evicted;
    }

    int capacity() {
        return capacity;
    }

    /** The cached table at {@code offset}, or null. Lock-free. */
    Table get(long offset) {
        Table t = tables.get(offset);
        if (t != null && !t.referenced) {
            t.referenced = true;
        }
        return t;
    }

    /** Adds a table read from disk or newly made (caller holds the metadata lock and made room first). */
    Table put(long offset, MemorySegment data) {
        Table t = new Table(offset, data);
        tables.put(offset, t);
        return t;
    }

    /**
     * A zeroed buffer for a table: heap memory, so a table evicted while a reader still looks at it stays valid
     * for that reader and the garbage collector frees it after (native memory would need a lifetime protocol).
     * Disk I/O goes through the image's native staging buffer.
     */
    static MemorySegment allocate(long bytes) {
        return MemorySegment.ofArray(new long[(int) (bytes / 8)]);
    }

    boolean full() {
        return tables.size() >= capacity;
    }

    /**
     * Drops one clean table (CLOCK); false when every table is dirty (the caller flushes and tries again). Caller
     * holds the metadata lock.
     */
    boolean evictOne() {
        for (int pass = 0; pass < 2 * capacity + 2; pass++) {
            if (hand == null || !hand.hasNext()) {
                hand = tables.values().iterator();
                if (!hand.hasNext()) {
                    return false;
                }
            }
            Table t = hand.next();
            if (t.dirty()) {
                continue;
            }
            if (t.referenced) {
                t.referenced = false;
                continue;
            }
            tables.remove(t.offset, t); // a reader still holding t keeps reading consistent (clean) entries
            evicted.accept(t);
            return true;
        }
        return false;
    }

    /** Drops every table (they must be clean or obsolete). */
    void clearAll() {
        for (Table t : tables.values()) {
            evicted.accept(t);
        }
        tables.clear();
        hand = null;
    }

    Iterable<Table> all() {
        return tables.values();
    }

    void close() {
        tables.clear();
    }
}
