// SPDX-License-Identifier: Apache-2.0
/**
 * The virtio-net device (virtio 1.2 §5.1) behind vhost-user: a guest NIC as a port of the {@link io.iovirt.net}
 * switch, with receive and transmit queues, multiqueue flow steering and the RARP announcement after migration.
 */
package io.iovirt.devices.net;
