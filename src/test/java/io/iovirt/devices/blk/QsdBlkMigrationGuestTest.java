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

    /**
     * Seen three times on 2026-12-05, each time in another case, after about a dozen CI runs without it (two of them
     * on a fresh machine): the guest's disk on qemu-storage-daemon 7.2 stopped completing requests — at boot before
     * the second verify pass (loggingToggledUnderIoThenMigrates), on the destination after a migration that completed
     * (packedRingTwoQueuesMigrate: nothing more on its console), and on a daemon restarted during the migration
     * (QEMU logged "vhost VQ 0 ring restore failed: -22", its fall-back to the used index). A likely cause where
     * the guest has one vCPU (a one-queue case), found on 2026-12-06 with iovirt's own backend: under TCG QEMU 7.2 then
     * leaves out the guest's memory barriers, so guest and backend can both miss the other's ring update (a lost
     * interrupt or kick; see QueueWorker.RECHECK_MILLIS, iovirt's remedy), and qemu-storage-daemon has no such
     * recheck; the two-queue case (two vCPUs) it does not explain. iovirt
     * runs the same cases in IovirtBlkMigrationGuestTest, where a stall fails the test; here the reference peer's
     * stall is reported as an aborted test with the console and QEMU's log, not as a failure of this project.
     */
    @Override
    String knownStall() {
        return "qemu-storage-daemon: the guest's disk made no progress within the timeout (the reference peer's"
                + " stall, seen intermittently; iovirt's variant of this test must pass)";
    }
}
