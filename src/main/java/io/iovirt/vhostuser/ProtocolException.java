// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import java.io.IOException;

/**
 * The peer broke the vhost-user protocol: a malformed or unknown message, a value outside what was negotiated or
 * a request that makes no sense in the connection's state. The connection is closed; nothing else is affected.
 */
public final class ProtocolException extends IOException {
    public ProtocolException(String message) {
        super(message);
    }

    public ProtocolException(String message, Throwable cause) {
        super(message, cause);
    }
}
