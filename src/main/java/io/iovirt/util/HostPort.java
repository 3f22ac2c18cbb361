// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import java.net.Inet6Address;
import java.net.InetAddress;

/** How an address and port are written for people and URLs: {@code 127.0.0.1:10809}, {@code [::1]:10809}. */
public final class HostPort {
    private HostPort() {}

    /**
     * The address's numeric form and the port; an IPv6 address in brackets (RFC 3986 §3.2.2), so the port cannot be
     * read as one more group of the address ({@code ::1:10809} would be).
     */
    public static String format(InetAddress address, int port) {
        String h = address.getHostAddress();
        return (address instanceof Inet6Address ? "[" + h + "]" : h) + ":" + port;
    }
}
