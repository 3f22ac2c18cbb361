// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import jdk.jfr.Category;
import jdk.jfr.DataAmount;
import jdk.jfr.Description;
import jdk.jfr.Label;
import jdk.jfr.Name;
import jdk.jfr.StackTrace;
import jdk.jfr.Timespan;

/**
 * A JFR event for a blk request that took longer than the device's threshold
 * ({@link BlkDevice#slowRequestThreshold}), from the moment it was taken from the ring to its status byte. Created
 * only for slow requests, so the fast path allocates nothing; recorded only while a JFR recording runs.
 */
@Name("io.iovirt.blk.SlowRequest")
@Label("Slow blk request")
@Category({"iovirt", "blk"})
@Description("A virtio-blk request slower than the threshold set with serve blk --jfr-slow-ms")
@StackTrace(false)
final class SlowRequestEvent extends jdk.jfr.Event {
    @Label("Device")
    String device;

    @Label("Queue")
    int queue;

    @Label("Kind")
    @Description("read, write, flush, or other (discard, write zeroes, get id, rejected)")
    String kind;

    @Label("Offset")
    @Description("Image byte offset of a read or write")
    @DataAmount
    long offset;

    @Label("Bytes")
    @DataAmount
    long bytes;

    @Label("Status")
    @Description("virtio-blk status: 0 OK, 1 I/O error, 2 unsupported")
    int status;

    @Label("Latency")
    @Timespan(Timespan.NANOSECONDS)
    long latency;

    static void emit(String device, int queue, String kind, long offset, long bytes, int status, long latencyNanos) {
        SlowRequestEvent e = new SlowRequestEvent();
        if (!e.isEnabled()) {
            return;
        }
        e.device = device;
        e.queue = queue;
        e.kind = kind;
        e.offset = offset;
        e.bytes = bytes;
        e.status = status;
        e.latency = latencyNanos;
        e.commit();
    }
}
