// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import org.junit.jupiter.api.Test;

/**
 * A TCP listen address that does not resolve ({@code serve nbd --listen nohost:10809}) is named with what to give
 * instead: the resolver's bare "nohost: Name or service not known" used to be the whole error line.
 */
class NbdListenAddressTest {
    @Test
    void aHostThatDoesNotResolveIsNamedWithTheRemedy() {
        String host = "no-such-host.invalid"; // RFC 6761: never resolves
        IOException e = assertThrows(
                IOException.class, () -> NbdServer.startTcp(host, 0, 1).close());
        assertEquals(
                "cannot listen on " + host + ": no such host (it does not resolve); give a loopback address, e.g."
                        + " 127.0.0.1, ::1 or localhost",
                e.getMessage());
    }
}
