// SPDX-License-Identifier: Apache-2.0
/**
 * The virtual switch: Ethernet frames, a learning MAC table, and ports — vhost-user guest NICs, stream sockets
 * (QEMU {@code -netdev stream}) for emulated NICs, and TAP devices — with per-port counters.
 */
package io.iovirt.net;
