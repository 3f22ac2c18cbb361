// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.QemuStorageDaemon;
import java.nio.file.Path;

/**
 * The migration cases against qemu-storage-daemon (libvhost-user): proof that they test the protocol. Two daemons
 * share the image only with QEMU's image locking off on both; libvhost-user implements the split ring only, so the
 * packed=on case negotiates a split ring there.
 */
class QsdBlkMigrationGuestTest extends BlkMigrationGuestTest {
    @Override
    String backendName() {
        return "qemu-storage-daemon";
    }

    @Override
    ChildProcess startBackend(Path image, Path socket, int queues, String tag) {
        return QemuStorageDaemon.builder(image, socket)
                .numQueues(queues)
                .cacheDirect(true)
                .locking(false)
                .log(dir.resolve("qsd-" + tag + ".log"))
                .start()
                .process();
    }

    @Override
    String dirtyLogEvidence() {
        return null;
    }
}
