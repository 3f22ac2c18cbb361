// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.util.List;

/** Live migration between two {@code iovirt serve blk} processes on one image (O_DIRECT, io_uring). */
class IovirtBlkMigrationGuestTest extends BlkMigrationGuestTest {
    @Override
    String backendName() {
        return "iovirt";
    }

    @Override
    ChildProcess startBackend(Path image, Path socket, int queues, String tag) {
        return ChildProcess.builder(IovirtCli.command(List.of("serve", "blk", "--image", image.toString(),
                        "--socket", socket.toString(), "--queues", Integer.toString(queues), "--direct")))
                .name("iovirt serve blk " + tag).log(dir.resolve("iovirt-" + tag + ".log"))
                .startListening(socket, BlkBackendUnderTest.START_TIMEOUT);
    }

    @Override
    String dirtyLogEvidence() {
        return "dirty log of";
    }
}
