// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

/** A guest-supplied address or length that does not lie inside guest memory. Guest input, not a backend bug. */
public final class GuestMemoryFault extends Exception {
    public GuestMemoryFault(String message) {
        super(message, null, false, false); // thrown on hostile input: no stack walk
    }
}
