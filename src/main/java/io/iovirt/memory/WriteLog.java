// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

/**
 * Where a device reports the guest memory it wrote while a live migration tracks dirty pages (vhost-user
 * {@code VHOST_F_LOG_ALL}). Installed in the device's {@link GuestMemoryHolder} only while logging is on: with it
 * off the holder returns null and a write costs one volatile read and a null check.
 *
 * <p>Call after the write, reading the log from the holder after the write too: a log installed later comes with
 * the migration's full copy of memory, so a write made before it is copied anyway.
 */
public interface WriteLog {
    /** The device wrote guest memory {@code [gpa, gpa + len)} (data buffers, written-back packed descriptors). */
    void written(long gpa, long len);

    /**
     * The device wrote {@code len} bytes at {@code offset} into queue {@code queue}'s used ring (split) or device
     * event area (packed). Logged only when the frontend asked for it on that ring (VHOST_VRING_F_LOG), against the
     * address it gave for it.
     */
    void usedWritten(int queue, long offset, long len);
}
