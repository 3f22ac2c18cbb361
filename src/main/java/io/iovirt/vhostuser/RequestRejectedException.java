// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import java.io.IOException;

/** The backend answered a request with a failure status (REPLY_ACK non-zero, or an empty GET_CONFIG reply). */
public final class RequestRejectedException extends IOException {
    private final long status;

    public RequestRejectedException(String message, long status) {
        super(message);
        this.status = status;
    }

    public long status() {
        return status;
    }
}
