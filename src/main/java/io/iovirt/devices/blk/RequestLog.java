// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import java.lang.System.Logger.Level;

/** Bad requests are answered with an error status; this logs them at most once a second per queue. */
final class RequestLog {
    private static final System.Logger LOG = System.getLogger(RequestLog.class.getName());
    private final String name;
    private long last;
    private long suppressed;

    RequestLog(String name) {
        this.name = name;
    }

    void requestFailed(String why) {
        long now = System.nanoTime();
        if (last != 0 && now - last < 1_000_000_000L) {
            suppressed++;
            return;
        }
        String more = suppressed > 0 ? " (" + suppressed + " similar suppressed)" : "";
        LOG.log(Level.WARNING, "{0}: request failed: {1}{2}", name, why, more);
        last = now | 1;
        suppressed = 0;
    }
}
