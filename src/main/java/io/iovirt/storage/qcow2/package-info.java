// SPDX-License-Identifier: Apache-2.0
/**
 * qcow2 images (QEMU docs/interop/qcow2.txt) read and written by iovirt itself, for the block backends that serve
 * them (vhost-user-blk, NBD). {@link io.iovirt.storage.qcow2.Qcow2Image} is the public class (a
 * {@link io.iovirt.storage.DiskImage}); its class comment states the concurrency rules and the crash-consistency
 * contract, and says which class of the package implements what: {@code Qcow2Header} (the header),
 * {@code Refcounts} (refcounts and cluster allocation), {@code MetadataLayout} (where the metadata lies, and the
 * checks before writing), {@code CompressedClusters} (compressed clusters) and {@code MetaCache} (the caches of L2
 * tables and refcount blocks).
 */
package io.iovirt.storage.qcow2;
