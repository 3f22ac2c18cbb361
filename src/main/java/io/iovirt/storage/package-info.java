// SPDX-License-Identifier: Apache-2.0
/**
 * Disk images the block backends serve: raw files opened with O_DIRECT where possible, read and written at
 * offsets, flushed with fsync; and {@link io.iovirt.storage.ImageFormat}, which tells a raw image from one whose
 * header says it is something else (qcow2, VMDK, VHDX, VDI, LUKS...).
 */
package io.iovirt.storage;
