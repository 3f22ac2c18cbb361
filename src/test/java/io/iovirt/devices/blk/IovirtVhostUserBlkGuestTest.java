// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/** The real-guest blk suite against {@code iovirt serve blk}, started as its own process like a user would. */
class IovirtVhostUserBlkGuestTest extends VhostUserBlkGuestTest {

    @Override
    protected BlkBackendUnderTest backend() {
        return new BlkBackendUnderTest() {
            @Override
            public String name() {
                return "iovirt";
            }

            @Override
            public ChildProcess start(Path image, Path socket, int queues, boolean readonly, Path workDir) {
                List<String> args = new ArrayList<>(List.of(
                        "serve",
                        "blk",
                        "--image",
                        image.toString(),
                        "--socket",
                        socket.toString(),
                        "--queues",
                        Integer.toString(queues)));
                if (readonly) {
                    args.add("--readonly");
                }
                return ChildProcess.builder(IovirtCli.command(args))
                        .name("iovirt serve blk")
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
