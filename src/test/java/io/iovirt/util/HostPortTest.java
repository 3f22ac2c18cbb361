// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.net.InetAddress;
import org.junit.jupiter.api.Test;

class HostPortTest {
    @Test
    void anIpv6HostIsBracketedAndAnIpv4OneIsNot() throws Exception {
        assertEquals("[0:0:0:0:0:0:0:1]:10809", HostPort.format(InetAddress.getByName("::1"), 10809));
        assertEquals("127.0.0.1:9100", HostPort.format(InetAddress.getByName("127.0.0.1"), 9100));
        // an IPv4-mapped IPv6 literal is an IPv4 address to Java, written as one
        assertEquals("127.0.0.1:1", HostPort.format(InetAddress.getByName("::ffff:127.0.0.1"), 1));
    }
}
