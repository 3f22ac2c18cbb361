// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import org.junit.jupiter.api.Test;

/**
 * A TCP listen address that does not resolve ({@code serve nbd --listen nohost:10809}) is named with what to give
 * instead: the resolver's bare "nohost: Name or service not known" used to be the whole error line. An address it
 * listens on is written as a client would type it: an IPv6 host in brackets ({@code tcp:::1:10809} read as a host
 * {@code ::1:10809} with no port).
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

    @Test
    void anIpv6ListenAddressIsWrittenWithItsHostInBrackets() throws IOException {
        for (String host : new String[] {"::1", "0:0:0:0:0:0:0:1"}) {
            try (NbdServer s = NbdServer.startTcp(host, 0, 1)) {
                assertTrue(s.address().matches("tcp:\\[0:0:0:0:0:0:0:1]:[1-9][0-9]*"), s.address());
            }
        }
        try (NbdServer s = NbdServer.startTcp("127.0.0.1", 0, 1)) {
            assertTrue(s.address().matches("tcp:127\\.0\\.0\\.1:[1-9][0-9]*"), s.address());
        }
    }
}
