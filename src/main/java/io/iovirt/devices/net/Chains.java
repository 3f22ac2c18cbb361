// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import io.iovirt.virtio.DescriptorChain;
import java.lang.foreign.MemorySegment;

/**
 * Copies between descriptor chains and private buffers by walking the chain's already translated buffers: no slice
 * objects, so the per-frame path allocates nothing.
 */
final class Chains {
    private Chains() {}

    /**
     * Copies {@code len} bytes of the chain's device-readable part, starting {@code at} bytes into it, to
     * {@code dst[dstOff..]}. The caller checked that {@code at + len <= c.readableBytes()}.
     */
    static void gather(DescriptorChain c, long at, MemorySegment dst, long dstOff, long len) {
        c.gather(at, dst, dstOff, len);
    }

    /**
     * Copies {@code len} bytes from {@code src[srcOff..]} into the chain's device-writable part, starting {@code at}
     * bytes into it. The caller checked that {@code at + len <= c.writableBytes()}.
     */
    static void scatter(DescriptorChain c, long at, MemorySegment src, long srcOff, long len) {
        c.scatter(at, src, srcOff, len);
    }
}
