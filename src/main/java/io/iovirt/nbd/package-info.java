// SPDX-License-Identifier: Apache-2.0
/**
 * An NBD server (the protocol of the NBD project's doc/proto.md): fixed newstyle handshake, OPT_GO/OPT_INFO with
 * block sizes, structured replies, the {@code base:allocation} metadata context, and the transmission commands a
 * QEMU or kernel client uses, exporting {@link io.iovirt.storage.DiskImage}s over UNIX or loopback TCP sockets.
 * It puts iovirt's storage behind QEMU's emulated disks (AHCI, NVMe) as well as behind virtio-blk.
 *
 * <p>{@link io.iovirt.nbd.NbdServer} accepts clients (refusing those over its limit in {@code NbdRefusals}); each
 * client's {@code NbdConnection} runs the protocol's two phases on its socket ({@code NbdChannel}): the option
 * haggling in {@code NbdHandshake}, which returns what was agreed (export, structured replies, base:allocation,
 * block size), then the transmission phase, its requests served by a few worker threads.
 */
package io.iovirt.nbd;
