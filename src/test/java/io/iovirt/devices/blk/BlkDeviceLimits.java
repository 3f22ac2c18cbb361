// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import java.time.Duration;

/** A {@link BlkDevice}'s limits that tests in other packages (the daemon's) change. */
public final class BlkDeviceLimits {
    private BlkDeviceLimits() {}

    /**
     * How long the device's queue stop waits for a worker still finishing its requests ({@code
     * QueueWorker.STOP_WAIT_LIMIT}, 30 s, by default): longer than a test lasts keeps a frontend's session — the
     * thread that stops the queues — in that stop for as long as a request is stuck.
     */
    public static void stopWaitLimit(BlkDevice device, Duration limit) {
        device.stopWaitLimit(limit);
    }
}
