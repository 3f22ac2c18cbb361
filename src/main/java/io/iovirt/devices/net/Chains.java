package io.iovirt.devices.net;

import io.iovirt.virtio.DescriptorChain;
import java.lang.foreign.MemorySegment;

/**
 * Copies between descriptor chains and private buffers by walking the chain's already translated buffers: no slice
 * objects, so the per-frame path allocates nothing.
 */
final class Chains {
    private Chains() {
    }

    /**
     * Copies {@code len} bytes of the chain's device-readable part, starting {@code at} bytes into it, to
     * {@code dst[dstOff..]}. The caller checked that {@code at + len <= c.readableBytes()}.
     */
    static void gather(DescriptorChain c, long at, MemorySegment dst, long dstOff, long len) {
        int n = c.readableCount();
        for (int i = 0; i < n && len > 0; i++) {
            MemorySegment s = c.segment(i);
            long size = s.byteSize();
            if (at >= size) {
                at -= size;
                continue;
            }
            long k = Math.min(size - at, len);
            MemorySegment.copy(s, at, dst, dstOff, k);
            dstOff += k;
            len -= k;
            at = 0;
        }
    }

    /**
     * Copies {@code len} bytes from {@code src[srcOff..]} into the chain's device-writable part, starting {@code at}
     * bytes into it. The caller checked that {@code at + len <= c.writableBytes()}.
     */
    static void scatter(DescriptorChain c, long at, MemorySegment src, long srcOff, long len) {
        int n = c.count();
        for (int i = c.readableCount(); i < n && len > 0; i++) {
            MemorySegment s = c.segment(i);
            long size = s.byteSize();
            if (at >= size) {
                at -= size;
                continue;
            }
            long k = Math.min(size - at, len);
            MemorySegment.copy(src, srcOff, s, at, k);
            srcOff += k;
            len -= k;
            at = 0;
        }
    }
}
