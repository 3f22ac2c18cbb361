package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import java.nio.file.Path;

/**
 * A vhost-user-blk backend that the real-guest tests in {@link VhostUserBlkGuestTest} run against. Each backend is
 * a separate process that listens on a UNIX socket; QEMU connects to it as the client.
 */
public interface BlkBackendUnderTest {

    /** Name in test reports. */
    String name();

    /**
     * Starts serving {@code image} (a raw file) on {@code socket} and returns once the backend listens. The caller
     * closes the returned process (which kills it), or kills it to simulate a crash.
     *
     * @param queues   virtqueues offered to the guest (num-queues)
     * @param readonly serve the disk read-only (VIRTIO_BLK_F_RO), refusing writes
     * @param workDir  where the backend may put its log
     */
    ChildProcess start(Path image, Path socket, int queues, boolean readonly, Path workDir);

    /**
     * Whether the backend offers VIRTIO_F_RING_PACKED. When it does not, QEMU silently negotiates the split ring
     * even with {@code packed=on}; the packed test then asserts the ring only when this is true.
     */
    boolean offersPackedRing();
}
