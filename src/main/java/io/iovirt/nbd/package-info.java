// SPDX-License-Identifier: Apache-2.0
/**
 * An NBD server (the protocol of the NBD project's doc/proto.md): fixed newstyle handshake, OPT_GO/OPT_INFO with
 * block sizes, structured replies, the {@code base:allocation} metadata context, and the transmission commands a
 * QEMU or kernel client uses, exporting {@link io.iovirt.storage.DiskImage}s over UNIX or loopback TCP sockets.
 * It puts iovirt's storage behind QEMU's emulated disks (AHCI, NVMe) as well as behind virtio-blk.
 */
package io.iovirt.nbd;
