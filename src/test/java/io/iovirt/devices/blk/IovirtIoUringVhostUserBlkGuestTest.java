// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.IoUring;
import io.iovirt.linux.LinuxException;
import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import io.iovirt.vm.GuestResult;
import io.iovirt.vm.QemuGuest;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;

/**
 * The real-guest blk suite against {@code iovirt serve blk --direct --io-engine io_uring}: the path where a queue
 * keeps many requests in flight and completes them out of order. Adds a mixed random read/write fio run with
 * verification at a queue depth that keeps the ring busy.
 */
class IovirtIoUringVhostUserBlkGuestTest extends VhostUserBlkGuestTest {

    @BeforeEach
    void needsIoUringAndDirectIo() {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
        try (var fd = FileIo.open(disk, FileIo.O_RDWR | FileIo.O_DIRECT)) {
            // the temporary directory's file system takes O_DIRECT
        } catch (LinuxException e) {
            Require.that(false, "O_DIRECT is not supported under " + dir + ": " + e.getMessage());
        }
    }

    @Override
    protected BlkBackendUnderTest backend() {
        return BlkBackendUnderTest.iovirt("iovirt-io_uring", "--direct", "--io-engine", "io_uring");
    }

    @Test
    void fioRandomReadWriteWithVerifyAtQueueDepth32() throws Exception {
        ChildProcess backend = backend().start(disk, socket, 1, false, dir);
        try (backend) {
            // Overlapping random reads and writes of mixed sizes, 32 in flight; every block written is read back
            // and checked (crc32c + the block's offset in its header), at the end and in between.
            GuestResult r = QemuGuest.builder(image)
                    .name("iovirt-io_uring/fio-randrw")
                    .workDir(dir)
                    .fio()
                    .args(
                            "-chardev",
                            "socket,id=vub0,path=" + QemuGuest.escape(socket.toString()),
                            "-device",
                            "vhost-user-blk-pci,chardev=vub0,num-queues=1")
                    .payload("""
                            set -e
                            for i in $(seq 100); do [ -b /dev/vda ] && break; sleep 0.1; done
                            fio --name=randrw --filename=/dev/vda --ioengine=libaio --direct=1 --rw=randrw \\
                                --rwmixread=50 --bsrange=4k-128k --size=32M --iodepth=32 --iodepth_batch_submit=8 \\
                                --verify=crc32c --verify_backlog=64 --do_verify=1 --verify_fatal=1 \\
                                --verify_state_save=0 --randseed=7
                            """)
                    .build()
                    .run(TIMEOUT.multipliedBy(2));
            assertEquals(0, r.exitCode(), r.consoleTail(40));
            assertTrue(r.output().contains("err= 0"), r.output());
            assertTrue(r.output().contains("READ:") && r.output().contains("WRITE:"), r.output());
            r.outputLines().stream()
                    .filter(l -> l.contains("IOPS=") || l.contains("verify")) // for the CI log
                    .forEach(l -> System.out.println("fio-randrw: " + l.strip()));
            assertTrue(backend.isAlive(), backend.logTail(20));
        }
    }
}
