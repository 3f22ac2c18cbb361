// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

/**
 * A device refused a well-formed request (a read-only configuration field, a queue layout it does not support,
 * an MTU out of range). The frontend gets a failure reply when it asked for one (REPLY_ACK); the connection stays up.
 */
public class BackendException extends Exception {
    public BackendException(String message) {
        super(message);
    }

    public BackendException(String message, Throwable cause) {
        super(message, cause);
    }
}
