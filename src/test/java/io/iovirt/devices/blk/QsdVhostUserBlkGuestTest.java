// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.QemuStorageDaemon;
import java.nio.file.Path;

/** The real-guest blk suite against QEMU's own backend: proof the cases test the protocol, not iovirt's quirks. */
class QsdVhostUserBlkGuestTest extends VhostUserBlkGuestTest {

    @Override
    protected BlkBackendUnderTest backend() {
        return new BlkBackendUnderTest() {
            @Override
            public String name() {
                return "qemu-storage-daemon";
            }

            @Override
            public ChildProcess start(Path image, Path socket, int queues, boolean readonly, Path workDir) {
                return QemuStorageDaemon.builder(image, socket)
                        .numQueues(queues)
                        .writable(!readonly)
                        .cacheDirect(true)
                        .log(workDir.resolve("qsd.log"))
                        .start()
                        .process();
            }

            /** qemu-storage-daemon serves vhost-user through libvhost-user, which implements only the split ring. */
            @Override
            public boolean offersPackedRing() {
                return false;
            }
        };
    }
}
