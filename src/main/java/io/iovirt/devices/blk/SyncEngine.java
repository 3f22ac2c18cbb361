// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.virtio.DescriptorChain;
import io.iovirt.virtio.RingHandler;

/**
 * Serves a virtio-blk queue one request at a time: each request's preadv/pwritev/fdatasync runs on the queue's
 * worker thread before the next is popped ({@link RingHandler} runs the ring). Bad requests are answered with an
 * error status and logged at most once a second per queue; a request with no room for a status fails the queue.
 */
final class SyncEngine implements RingHandler.Device {
    private final BlkQueueHandler handler;
    private final RequestLog log;

    SyncEngine(BlkQueueHandler handler, RequestLog log) {
        this.handler = handler;
        this.log = log;
    }

    @Override
    public long process(DescriptorChain chain) throws BlkQueueHandler.UnanswerableRequest {
        long written = handler.process(chain);
        String why = handler.lastError();
        if (why != null) {
            log.requestFailed(why);
        }
        return written;
    }

    @Override
    public void stopped() {
        handler.close();
    }
}
