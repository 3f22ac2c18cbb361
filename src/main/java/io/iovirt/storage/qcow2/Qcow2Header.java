// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import java.io.IOException;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/**
 * The qcow2 header (QEMU docs/interop/qcow2.txt, versions 2 and 3) and the header extensions iovirt reads: the
 * backing file format name and the feature name table. Parsing checks every field before the image uses it: a
 * hostile or damaged image gets a clear refusal, never an out-of-range table.
 */
record Qcow2Header(
        int version,
        int clusterBits,
        long size,
        int l1Size,
        long l1Offset,
        long refTableOffset,
        int refTableClusters,
        int nbSnapshots,
        long incompatible,
        long compatible,
        long autoclear,
        int refcountOrder,
        int headerLength,
        int compressionType,
        String backingFile,
        String backingFormat,
        Map<String, String> featureNames) {

    static final int MAGIC = 0x514649fb;
    static final ValueLayout.OfInt BE32 = ValueLayout.JAVA_INT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
    static final ValueLayout.OfLong BE64 = ValueLayout.JAVA_LONG_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);
    static final ValueLayout.OfShort BE16 = ValueLayout.JAVA_SHORT_UNALIGNED.withOrder(ByteOrder.BIG_ENDIAN);

    /** Field offsets iovirt writes. */
    static final int OFF_SIZE = 24;

    static final int OFF_L1_SIZE = 36;
    static final int OFF_REFTABLE = 48;
    static final int OFF_INCOMPATIBLE = 72;
    static final int OFF_AUTOCLEAR = 88;

    static final long INCOMPAT_DIRTY = 1;
    static final long INCOMPAT_CORRUPT = 1 << 1;
    static final long INCOMPAT_DATA_FILE = 1 << 2;
    static final long INCOMPAT_COMPRESSION = 1 << 3;
    static final long INCOMPAT_EXTL2 = 1 << 4;
    static final long COMPAT_LAZY_REFCOUNTS = 1;

    /**
     * Largest L1 table and refcount table (QEMU's limits, QCOW_MAX_L1_SIZE and QCOW_MAX_REFTABLE_SIZE): both are
     * read whole into memory when the image opens, so a header may not ask for more. (The refcount table bound used
     * to be 8 GiB: a 2 KiB header with 512-byte clusters could make an open allocate and zero 8 GiB.)
     */
    static final long MAX_L1_BYTES = 32L << 20;

    static final long MAX_REFTABLE_BYTES = 8L << 20;

    private static final int EXT_END = 0;
    private static final int EXT_BACKING_FORMAT = 0xe2792aca;
    private static final int EXT_FEATURE_TABLE = 0x6803f857;

    /**
     * Parses the header from {@code first} (the image's first cluster, or its first 64 KiB when shorter).
     *
     * @throws IOException when the file is not qcow2 or a field is out of range
     */
    static Qcow2Header parse(Path path, MemorySegment first) throws IOException {
        if (first.byteSize() < 72 || first.get(BE32, 0) != MAGIC) {
            throw new IOException("image " + path + " is not a qcow2 image (no 'QFI\\xfb' magic)");
        }
        int version = first.get(BE32, 4);
        if (version != 2 && version != 3) {
            throw new IOException("image " + path + " is qcow2 version " + version + ": iovirt reads versions 2 and 3");
        }
        long backingOffset = first.get(BE64, 8);
        int backingSize = first.get(BE32, 16);
        int clusterBits = first.get(BE32, 20);
        long size = first.get(BE64, 24);
        int crypt = first.get(BE32, 32);
        int l1Size = first.get(BE32, 36);
        long l1Offset = first.get(BE64, 40);
        long refTableOffset = first.get(BE64, 48);
        int refTableClusters = first.get(BE32, 56);
        int nbSnapshots = first.get(BE32, 60);
        if (clusterBits < 9 || clusterBits > 21) {
            throw corrupt(path, "cluster_bits " + clusterBits + " outside 9..21");
        }
        long cs = 1L << clusterBits;
        if (crypt != 0) {
            throw new IOException("image " + path + " is encrypted (crypt_method " + crypt
                    + "): iovirt does not serve encrypted qcow2 images; decrypt it with qemu-img convert");
        }
        if (size < 0 || size > (1L << 56)) {
            throw corrupt(path, "virtual size " + size + " out of range");
        }
        long l2Entries = cs / 8;
        long needL1 = (size + cs * l2Entries - 1) / (cs * l2Entries);
        if (l1Size < needL1 || l1Size > MAX_L1_BYTES / 8) {
            throw corrupt(
                    path,
                    "L1 table of " + Integer.toUnsignedString(l1Size) + " entries for a virtual size needing "
                            + needL1);
        }
        if ((l1Offset & (cs - 1)) != 0 || l1Offset <= 0) {
            throw corrupt(path, "L1 table offset " + l1Offset + " is not cluster-aligned");
        }
        if ((refTableOffset & (cs - 1)) != 0
                || refTableOffset <= 0
                || refTableClusters <= 0
                || refTableClusters > MAX_REFTABLE_BYTES / cs) {
            throw corrupt(
                    path, "refcount table at " + refTableOffset + " (" + refTableClusters + " clusters) is invalid");
        }
        long incompatible = 0, compatible = 0, autoclear = 0;
        int refcountOrder = 4;
        int headerLength = 72;
        int compressionType = 0;
        if (version == 3) {
            if (first.byteSize() < 104) {
                throw corrupt(
                        path,
                        "the file ends at byte " + first.byteSize()
                                + ", inside the 104-byte version 3 header (a truncated image)");
            }
            incompatible = first.get(BE64, 72);
            compatible = first.get(BE64, 80);
            autoclear = first.get(BE64, 88);
            refcountOrder = first.get(BE32, 96);
            headerLength = first.get(BE32, 100);
            if (refcountOrder < 0 || refcountOrder > 6) {
                throw corrupt(path, "refcount_order " + refcountOrder + " outside 0..6");
            }
            if (headerLength < 104 || headerLength > cs || (headerLength & 7) != 0) {
                throw corrupt(path, "header_length " + headerLength);
            }
            if (headerLength > first.byteSize()) {
                throw corrupt(
                        path,
                        "header_length " + headerLength + " runs past the " + first.byteSize()
                                + " bytes of the file iovirt reads the header from");
            }
            if (headerLength > 104) {
                compressionType = Byte.toUnsignedInt(first.get(ValueLayout.JAVA_BYTE, 104));
            }
        }
        // Header extensions: after the header, up to the end of the first cluster.
        String backingFormat = null;
        Map<String, String> featureNames = new HashMap<>();
        long pos = version == 3 ? (headerLength + 7L) & ~7L : 72;
        long end = Math.min(cs, first.byteSize());
        while (pos + 8 <= end) {
            int type = first.get(BE32, pos);
            long len = Integer.toUnsignedLong(first.get(BE32, pos + 4));
            if (type == EXT_END) {
                break;
            }
            if (pos + 8 + len > end) {
                throw corrupt(path, "header extension 0x" + Integer.toHexString(type) + " runs past the first cluster");
            }
            MemorySegment data = first.asSlice(pos + 8, len);
            if (type == EXT_BACKING_FORMAT) {
                backingFormat = new String(data.toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
            } else if (type == EXT_FEATURE_TABLE) {
                for (long f = 0; f + 48 <= len; f += 48) {
                    int kind = Byte.toUnsignedInt(data.get(ValueLayout.JAVA_BYTE, f));
                    int bit = Byte.toUnsignedInt(data.get(ValueLayout.JAVA_BYTE, f + 1));
                    byte[] name = data.asSlice(f + 2, 46).toArray(ValueLayout.JAVA_BYTE);
                    int n = 0;
                    while (n < name.length && name[n] != 0) {
                        n++;
                    }
                    featureNames.put(kind + ":" + bit, new String(name, 0, n, StandardCharsets.UTF_8));
                }
            }
            pos += 8 + ((len + 7) & ~7L);
        }
        String backingFile = null;
        if (backingOffset != 0) {
            // end - backingSize, not backingOffset + backingSize: an offset near Long.MAX_VALUE must not wrap around
            if (backingSize <= 0 || backingSize > 1023 || backingOffset < 0 || backingOffset > end - backingSize) {
                throw corrupt(
                        path, "backing file name at " + backingOffset + " (" + backingSize + " bytes) is invalid");
            }
            backingFile = new String(
                    first.asSlice(backingOffset, backingSize).toArray(ValueLayout.JAVA_BYTE), StandardCharsets.UTF_8);
        }
        return new Qcow2Header(
                version,
                clusterBits,
                size,
                l1Size,
                l1Offset,
                refTableOffset,
                refTableClusters,
                nbSnapshots,
                incompatible,
                compatible,
                autoclear,
                refcountOrder,
                headerLength,
                compressionType,
                backingFile,
                backingFormat,
                featureNames);
    }

    long clusterSize() {
        return 1L << clusterBits;
    }

    /** Incompatible feature bits iovirt does not implement, by name where the image's feature table has one. */
    List<String> unknownIncompatible(long known) {
        List<String> out = new ArrayList<>();
        for (int bit = 0; bit < 64; bit++) {
            if ((incompatible & ~known & (1L << bit)) != 0) {
                String name = featureNames.get("0:" + bit);
                out.add("bit " + bit
                        + (name != null
                                ? " (" + name + ")"
                                : switch (bit) {
                                    case 2 -> " (external data file)";
                                    case 4 -> " (extended L2 entries)";
                                    default -> "";
                                }));
            }
        }
        return out;
    }

    private static IOException corrupt(Path path, String what) {
        return new IOException(
                "qcow2 image " + path + " is damaged: " + what + " (check it with 'qemu-img check " + path + "')");
    }
}
