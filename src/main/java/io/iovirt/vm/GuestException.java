// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

/** A guest could not be built, booted, or did not finish; the message carries the console or log lines that say why. */
public class GuestException extends RuntimeException {

    public GuestException(String message) {
        super(message);
    }

    public GuestException(String message, Throwable cause) {
        super(message, cause);
    }
}
