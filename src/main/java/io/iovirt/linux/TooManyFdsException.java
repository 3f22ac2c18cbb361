// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;

/**
 * A peer sent more file descriptors with a message than the receiver accepts. Every descriptor that did arrive has
 * been closed already; the stream is out of step with the peer and should be closed.
 */
public final class TooManyFdsException extends IOException {
    private final int max;

    public TooManyFdsException(String message, int max) {
        super(message);
        this.max = max;
    }

    /** How many descriptors the receiver accepted. */
    public int max() {
        return max;
    }
}
