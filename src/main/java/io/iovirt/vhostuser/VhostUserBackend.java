// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.memory.GuestMemory;
import io.iovirt.virtio.QueueWorker;

/**
 * A virtio device served over vhost-user. The protocol layer ({@link VhostUserServer}) negotiates, validates every
 * message and calls these methods from its one control thread per connection, never concurrently. Data-path threads
 * are the device's own.
 */
public interface VhostUserBackend {
    /**
     * The virtio features the device offers (device bits, VIRTIO_F_VERSION_1, ring layouts, EVENT_IDX...). The
     * protocol layer adds VHOST_USER_F_PROTOCOL_FEATURES and VHOST_F_LOG_ALL (dirty logging is its own: {@link DirtyLog})
     * and never offers ACCESS_PLATFORM.
     */
    long features();

    /**
     * Protocol features the device adds to the core set (MQ, LOG_SHMFD, REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS,
     * RESET_DEVICE, STATUS): RARP and NET_MTU (their messages come here), INFLIGHT_SHMFD for a device whose
     * requests may be resubmitted after a backend restart (the protocol layer keeps the memory; each queue gets its
     * region as {@link VringSetup#inflight()}), and BACKEND_REQ (the device gets the frontend's backend channel
     * through {@link #backendChannel}).
     */
    default long protocolFeatures() {
        return 0;
    }

    /** How many virtqueues the device has (GET_QUEUE_NUM; indices beyond are refused). */
    int queueCount();

    /** Largest ring size the device accepts (at most 32768). */
    int maxQueueSize();

    /** The features the driver acknowledged (SET_FEATURES), without the vhost-user protocol bit. */
    void setFeatures(long acked) throws BackendException;

    /**
     * {@code size} bytes of configuration space from {@code offset} (GET_CONFIG).
     *
     * @throws BackendException the range is outside the configuration space
     */
    byte[] readConfig(int offset, int size) throws BackendException;

    /**
     * The driver wrote configuration space (SET_CONFIG). {@code migration} means restoring state on a migration
     * destination; otherwise only writable fields may change.
     */
    default void writeConfig(int offset, byte[] data, boolean migration) throws BackendException {
        throw new BackendException("configuration space is read-only");
    }

    /**
     * Start processing queue {@code index}: it is started and enabled, addresses validated. Called again only after
     * {@link #queueStopped}.
     */
    void queueStarted(int index, VringSetup setup) throws BackendException;

    /**
     * Stop processing queue {@code index} and return where to resume: on return the device no longer touches the
     * ring, its descriptors or guest memory for it, and every request it took is completed in the used ring. A device
     * that cannot get there within a bound it chooses (a thread stuck in I/O) fails instead: it reports
     * DEVICE_NEEDS_RESET ({@link #deviceStatus}), logs it naming the queue, keeps what that thread uses, names the
     * thread's worker in {@link #stillRunning}, and refuses {@link #queueStarted} for the index until the thread has
     * ended. That thread takes no new requests ({@link io.iovirt.virtio.Virtqueue#servedBy}): the position returned
     * moves on only by a request whose pop was under way.
     *
     * @return split: the next available index; packed: position | wrap counter << 15
     */
    int queueStopped(int index);

    /**
     * Begin stopping queue {@code index} without waiting: asked of every running queue before their
     * {@link #queueStopped} when the protocol layer stops several at once (the connection ended, RESET_DEVICE, a
     * status of 0), so that their stops overlap and the bound a device chooses counts from here for all of them
     * together — not once per queue, one after the other. {@link #queueStopped} follows for each, with all its
     * guarantees. A device that stops at once needs nothing here.
     */
    default void queueStopping(int index) {}

    /**
     * Asked right after {@link #queueStopped}: the worker whose thread still runs queue {@code index} because the
     * device gave up waiting for it, else null (the device let go of the queue). The protocol layer then does not
     * close the ring's kick, call and err descriptors, which that thread may still use through their numbers: it
     * points each number at an eventfd of its own (so the frontend's files are no longer reached) and has the worker
     * close them once its thread has ended ({@link QueueWorker#closeWhenEnded}). The frontend's call and err stay
     * with the ring for its next start, under new numbers.
     */
    default QueueWorker stillRunning(int index) {
        return null;
    }

    /**
     * The memory table changed; {@code memory} is already installed in every running queue's holder. On return no
     * device thread may still use memory from the previous snapshot: the caller unmaps regions that left.
     */
    default void memoryChanged(GuestMemory memory) {}

    /** The driver wrote the device status (SET_STATUS; 0 resets). */
    default void setStatus(int status) throws BackendException {}

    /** Status bits the device raises itself (e.g. DEVICE_NEEDS_RESET 0x40), OR-ed into GET_STATUS. */
    default int deviceStatus() {
        return 0;
    }

    /**
     * Back to the initial state: the frontend disconnected or sent RESET_DEVICE. All queues are stopped already;
     * configuration state the driver changed (e.g. writeback cache mode) reverts.
     */
    void reset();

    /** SEND_RARP (net, after migration): broadcast a RARP for {@code mac}. Only with the RARP protocol feature. */
    default void sendRarp(byte[] mac) throws BackendException {
        throw new BackendException("this device does not send RARP announcements");
    }

    /** NET_SET_MTU. Only with the NET_MTU protocol feature. */
    default void setMtu(int mtu) throws BackendException {
        throw new BackendException("this device does not support setting the MTU");
    }

    /**
     * The frontend's backend-to-frontend channel (SET_BACKEND_REQ_FD), or null when the connection ended. Only with
     * the BACKEND_REQ protocol feature. Called on the control thread; the device may use the channel from any
     * thread that is not a queue thread (e.g. to announce a resize) until it is replaced or withdrawn.
     */
    default void backendChannel(BackendChannel channel) {}
}
