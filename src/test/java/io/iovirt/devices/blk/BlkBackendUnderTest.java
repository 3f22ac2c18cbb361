// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;

/**
 * A vhost-user-blk backend that the real-guest tests in {@link VhostUserBlkGuestTest} run against. Each backend is
 * a separate process that listens on a UNIX socket; QEMU connects to it as the client.
 *
 * <p>Running the suite against another backend is one class that returns it from
 * {@link VhostUserBlkGuestTest#backend()}: {@link #iovirt} for {@code iovirt serve blk} with some options, an
 * implementation of its own for another program (qemu-storage-daemon: {@code QsdVhostUserBlkGuestTest}).
 */
public interface BlkBackendUnderTest {

    /** How long a backend may take to listen (a JVM start on a loaded 2-core machine is the slow case). */
    Duration START_TIMEOUT = Duration.ofSeconds(30);

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

    /**
     * {@code iovirt serve blk} started as its own process, as a user would, with {@code options} after the image,
     * socket and queue count ({@code --readonly} added when a test asks for it); it offers the packed ring.
     */
    static BlkBackendUnderTest iovirt(String name, String... options) {
        return new BlkBackendUnderTest() {
            @Override
            public String name() {
                return name;
            }

            @Override
            public ChildProcess start(Path image, Path socket, int queues, boolean readonly, Path workDir) {
                List<String> args = new ArrayList<>(List.of("--queues", Integer.toString(queues)));
                args.addAll(List.of(options));
                if (readonly) {
                    args.add("--readonly");
                }
                return ChildProcess.builder(IovirtCli.serveBlk(image, socket, args.toArray(String[]::new)))
                        .name(String.join(" ", "iovirt serve blk", String.join(" ", options))
                                .strip())
                        .log(workDir.resolve("iovirt.log"))
                        .startListening(socket, START_TIMEOUT);
            }

            @Override
            public boolean offersPackedRing() {
                return true;
            }
        };
    }
}
