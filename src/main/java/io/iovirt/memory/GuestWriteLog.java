// SPDX-License-Identifier: Apache-2.0
package io.iovirt.memory;

/**
 * Told about every range of guest memory a device wrote through a virtqueue: the hook for dirty-page logging during
 * live migration (VHOST_USER_SET_LOG_BASE). {@code io.iovirt.virtio.Virtqueue} is the one place that reports them: when a request is
 * pushed, all of its device-writable buffers (whatever wrote them — a copy, preadv, an io_uring read — wrote before
 * the push), and each write to the used ring / packed descriptor ring / event suppression areas. Called on the
 * queue's thread; must not block. The vhost-user layer installs one per device in its {@link GuestMemoryHolder}
 * while the frontend has logging on (VHOST_F_LOG_ALL); a queue may also have its own (Virtqueue.setWriteLog).
 */
@FunctionalInterface
public interface GuestWriteLog {
    /** The device wrote (or may have written) {@code len} bytes at guest physical address {@code gpa}. */
    void written(long gpa, long len);
}
