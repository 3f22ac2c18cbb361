// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.IovirtCli;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;

/** Live migration between two {@code iovirt serve blk} processes on one image (O_DIRECT, io_uring). */
class IovirtBlkMigrationGuestTest extends BlkMigrationGuestTest {
    @Override
    String backendName() {
        return "iovirt";
    }

    /** Every vhost-user message with its time in the backend's log: the migration's phases can be read off it. */
    @Override
    ChildProcess startBackend(Path image, Path socket, int queues, String tag) {
        Path logging = dir.resolve("logging.properties");
        try {
            Files.writeString(logging, """
                    handlers = java.util.logging.ConsoleHandler
                    java.util.logging.ConsoleHandler.level = ALL
                    .level = INFO
                    io.iovirt.vhostuser.level = FINE
                    """);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return ChildProcess.builder(IovirtCli.serveBlk(image, socket, "--queues", Integer.toString(queues), "--direct"))
                .env("JAVA_TOOL_OPTIONS", "-Djava.util.logging.config.file=" + logging)
                .name("iovirt serve blk " + tag)
                .log(dir.resolve("iovirt-" + tag + ".log"))
                .startListening(socket, BlkBackendUnderTest.START_TIMEOUT);
    }

    @Override
    String dirtyLogEvidence() {
        return "dirty log of";
    }

    @Override
    String reconnectedLogEvidence() {
        return "pages of guest memory dirty, for what the previous connection wrote";
    }

    /** SIGKILL the moment the in-flight record shows a request in flight (the crash recovery test's trigger). */
    @Override
    void crash(ChildProcess backend) throws Exception {
        BlkCrashRecoveryGuestTest.killWhileInFlight(backend, false);
        backend.kill(); // reap
    }

    @Override
    int resubmitted(ChildProcess restarted) {
        return BlkCrashRecoveryGuestTest.countResubmits(restarted.log());
    }
}
