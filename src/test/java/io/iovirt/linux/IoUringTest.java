// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static java.lang.foreign.ValueLayout.JAVA_BYTE;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import io.iovirt.testing.Require;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/** io_uring against the running kernel: real files, real completions. */
@Timeout(60)
class IoUringTest {
    @TempDir
    Path dir;

    @BeforeEach
    void needsIoUring() {
        String why = IoUring.unavailableReason();
        Require.that(why == null, why);
    }

    private static MemorySegment pattern(Arena a, long size, int seed) {
        MemorySegment s = FileIo.directBuffer(a, size);
        for (long i = 0; i < size; i++) {
            s.set(JAVA_BYTE, i, (byte) (i * 31 + seed));
        }
        return s;
    }

    /** Collects completions as {userData, result}. */
    private static final class Collected implements IoUring.CompletionHandler<RuntimeException> {
        final List<long[]> done = new ArrayList<>();

        @Override
        public void complete(long userData, int result, int flags) {
            done.add(new long[] {userData, result});
        }

        long result(long userData) {
            return done.stream().filter(d -> d[0] == userData).findFirst().orElseThrow()[1];
        }
    }

    @Test
    void structLayoutsMatchTheKernelAbi() {
        assertEquals(64, IoUring.SQE_LAYOUT.byteSize());
        assertEquals(16, IoUring.CQE_LAYOUT.byteSize());
        assertEquals(120, IoUring.PARAMS_LAYOUT.byteSize());
        assertEquals(40, IoUring.SQ_OFFSETS_LAYOUT.byteSize());
        assertEquals(40, IoUring.CQ_OFFSETS_LAYOUT.byteSize());
        // offsets from include/uapi/linux/io_uring.h
        assertEquals(4, IoUring.off(IoUring.SQE_LAYOUT, "fd"));
        assertEquals(16, IoUring.off(IoUring.SQE_LAYOUT, "addr"));
        assertEquals(28, IoUring.off(IoUring.SQE_LAYOUT, "op_flags"));
        assertEquals(32, IoUring.off(IoUring.SQE_LAYOUT, "user_data"));
        assertEquals(48, IoUring.off(IoUring.SQE_LAYOUT, "addr3"));
        assertEquals(8, IoUring.off(IoUring.CQE_LAYOUT, "res"));
        assertEquals(40, IoUring.off(IoUring.PARAMS_LAYOUT, "sq_off"));
        assertEquals(80, IoUring.off(IoUring.PARAMS_LAYOUT, "cq_off"));
    }

    @Test
    void setupRoundsUpAndReportsFeatures() throws Exception {
        try (IoUring ring = IoUring.create(100)) {
            assertEquals(128, ring.sqEntries());
            assertEquals(256, ring.cqEntries());
            assertEquals(256, ring.capacity());
            assertTrue((ring.features() & IoUring.FEAT_SINGLE_MMAP) != 0, "6.1 maps both rings at once");
            assertTrue(ring.fd().isCloseOnExec(), "io_uring descriptors are close-on-exec");
        }
        try (IoUring ring = IoUring.create(8, 1000)) {
            assertEquals(8, ring.sqEntries());
            assertEquals(1024, ring.cqEntries());
        }
        assertThrows(IllegalArgumentException.class, () -> IoUring.create(0));
        assertThrows(IllegalArgumentException.class, () -> IoUring.create(8, 4));
    }

    @Test
    void writeFsyncReadRoundTripThroughAFile() throws Exception {
        Path file = dir.resolve("f.raw");
        try (Arena a = Arena.ofConfined();
                IoUring ring = IoUring.create(8);
                Fd fd = FileIo.open(file, FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            MemorySegment one = pattern(a, 4096, 1);
            MemorySegment two = pattern(a, 512, 2);
            IoVec iov = IoVec.allocate(a, 2);
            iov.set(0, one);
            iov.set(1, two);
            ring.writev(fd, iov, 2, 1000, 7, IoUring.SQE_IO_LINK); // fsync only after the write succeeded
            ring.fsync(fd, IoUring.FSYNC_DATASYNC, 8);
            assertEquals(2, ring.outstanding());
            assertEquals(2, ring.submitAndWait(2));
            Collected c = new Collected();
            assertEquals(2, ring.reap(c));
            assertEquals(4608, c.result(7));
            assertEquals(0, c.result(8));
            assertEquals(0, ring.outstanding());
            assertEquals(5608, Files.size(file));

            MemorySegment back = a.allocate(4608);
            ring.read(fd, back.asSlice(0, 4096), 1000, 9);
            ring.read(fd, back.asSlice(4096), 5096, 10);
            ring.fsync(fd, 0, 11);
            ring.submitAndWait(3);
            c.done.clear();
            assertEquals(3, ring.reap(c));
            assertEquals(4096, c.result(9));
            assertEquals(512, c.result(10));
            assertEquals(0, c.result(11));
            assertEquals(-1, back.asSlice(0, 4096).mismatch(one));
            assertEquals(-1, back.asSlice(4096).mismatch(two));
            byte[] viaJdk = Files.readAllBytes(file);
            assertArrayEquals(one.toArray(JAVA_BYTE), Arrays.copyOfRange(viaJdk, 1000, 5096));

            // Short read at end of file, 0 past it: results are what pread(2) returns.
            MemorySegment tail = a.allocate(100);
            ring.readv(fd, oneEntry(a, tail), 1, 5558, 12);
            ring.read(fd, tail, 9000, 13);
            ring.submitAndWait(2);
            c.done.clear();
            ring.reap(c);
            assertEquals(50, c.result(12));
            assertEquals(0, c.result(13));
        }
    }

    @Test
    void registeredFilesGoByIndexAndAreMatchedByIdentityNotNumber() throws Exception {
        Path fileA = dir.resolve("a.raw");
        Path fileB = dir.resolve("b.raw");
        Files.write(fileA, new byte[] {'A', 'A', 'A', 'A'});
        Files.write(fileB, new byte[] {'B', 'B', 'B', 'B'});
        try (Arena a = Arena.ofConfined();
                IoUring ring = IoUring.create(8)) {
            MemorySegment buf = a.allocate(4);
            Collected c = new Collected();
            Fd fdA = FileIo.open(fileA, FileIo.O_RDONLY, 0);
            int numberA = fdA.get();
            ring.registerFiles(fdA);
            assertEquals(1, ring.registeredFiles());
            fdA.close(); // the ring keeps its own reference: operations on fdA still reach file A, by index
            ring.read(fdA, buf, 0, 1);
            ring.submitAndWait(1);
            ring.reap(c);
            assertEquals(4, c.result(1));
            assertEquals('A', buf.get(JAVA_BYTE, 0));

            try (Fd fdB = FileIo.open(fileB, FileIo.O_RDONLY, 0)) {
                assertEquals(numberA, fdB.get(), "the kernel hands out the lowest free number: A's");
                ring.read(fdB, buf, 0, 2); // same number, another Fd: by descriptor, so file B
                ring.submitAndWait(1);
                ring.reap(c);
                assertEquals(4, c.result(2));
                assertEquals('B', buf.get(JAVA_BYTE, 0));
            }

            ring.unregisterFiles();
            assertEquals(0, ring.registeredFiles());
            assertThrows(IllegalStateException.class, () -> ring.read(fdA, buf, 0, 3), "closed, and no longer held");
        }
    }

    private static IoVec oneEntry(Arena a, MemorySegment buffer) {
        IoVec v = IoVec.allocate(a, 1);
        v.set(0, buffer);
        return v;
    }

    @Test
    void manyDirectWritesInFlightThenVectoredReadsBack() throws Exception {
        Path file = dir.resolve("direct.raw");
        int n = 64;
        try (Arena a = Arena.ofConfined();
                IoUring ring = IoUring.create(n);
                Fd fd = FileIo.open(file, FileIo.O_RDWR | FileIo.O_CREAT | FileIo.O_DIRECT, 0600)) {
            FileIo.fallocate(fd, 0, 0, (long) n * 4096); // allocated blocks: O_DIRECT writes need no metadata change
            MemorySegment[] data = new MemorySegment[n];
            for (int i = 0; i < n; i++) {
                data[i] = pattern(a, 4096, i);
                ring.write(fd, data[i], (long) (n - 1 - i) * 4096, 1000 + i); // reverse order on disk
            }
            assertEquals(0, ring.free());
            assertThrows(IllegalStateException.class, () -> ring.nop(1));
            assertEquals(n, ring.submit());
            boolean[] seen = new boolean[n];
            int got = 0;
            while (got < n) {
                ring.submitAndWait(1);
                got += ring.reap((ud, res, flags) -> {
                    int i = (int) (ud - 1000);
                    assertFalse(seen[i], "completion " + ud + " reported twice");
                    seen[i] = true;
                    assertEquals(4096, res);
                });
            }
            assertEquals(0, ring.outstanding());

            // Read everything back with one READV per 4 blocks, 4 iovecs each.
            MemorySegment back = FileIo.directBuffer(a, (long) n * 4096);
            IoVec[] iovs = new IoVec[n / 4];
            for (int k = 0; k < n / 4; k++) {
                iovs[k] = IoVec.allocate(a, 4);
                for (int j = 0; j < 4; j++) {
                    iovs[k].set(j, back.asSlice((long) (k * 4 + j) * 4096, 4096));
                }
                ring.readv(fd, iovs[k], 4, (long) k * 4 * 4096, k);
            }
            ring.submitAndWait(n / 4);
            Collected c = new Collected();
            assertEquals(n / 4, ring.reap(c));
            for (long[] d : c.done) {
                assertEquals(4 * 4096, d[1]);
            }
            for (int i = 0; i < n; i++) {
                assertEquals(
                        -1, back.asSlice((long) (n - 1 - i) * 4096, 4096).mismatch(data[i]), "block of write " + i);
            }
        }
    }

    @Test
    void registeredEventFdWakesAnEpollLoop() throws Exception {
        Path file = dir.resolve("e.raw");
        try (Arena a = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                EventFd ev = EventFd.create(true);
                Epoll ep = Epoll.create(4);
                Fd fd = FileIo.open(file, FileIo.O_RDWR | FileIo.O_CREAT, 0600)) {
            ring.registerEventFd(ev);
            assertTrue(ring.eventFdRegistered());
            ep.add(ev.fd(), Epoll.EPOLLIN, 42);
            assertEquals(0, ep.wait(0), "nothing completed yet");

            ring.write(fd, pattern(a, 512, 3), 0, 5);
            ring.submit();
            int n = 0;
            long deadline = System.nanoTime() + 30_000_000_000L;
            while (n == 0 && System.nanoTime() < deadline) {
                n = ep.wait(1000); // 0 also when a signal interrupted the wait (seen in CI): wait again
            }
            assertEquals(1, n, "the completion signals the eventfd");
            assertEquals(42, ep.data(0));
            assertTrue(ev.read() >= 1);
            Collected c = new Collected();
            assertEquals(1, ring.reap(c));
            assertEquals(512, c.result(5));

            ring.unregisterEventFd();
            ring.nop(6);
            ring.submitAndWait(1);
            assertEquals(0, ep.wait(0), "no signal after unregistering");
            assertEquals(1, ring.reap(c));
        }
    }

    @Test
    void multishotPollReportsEveryWakeUpUntilCancelled() throws Exception {
        try (IoUring ring = IoUring.create(4);
                EventFd ev = EventFd.create(true)) {
            ring.pollMultishot(ev.fd(), Epoll.EPOLLIN, 1);
            ring.submit();
            assertEquals(0, ring.ready(), "not readable yet");
            List<long[]> seen = new ArrayList<>();
            for (int i = 0; i < 3; i++) { // the counter is never read: each write is a wake-up all the same
                ev.signal();
                ring.submitAndWait(1);
                ring.reap((ud, res, flags) -> seen.add(new long[] {ud, res, flags}));
                assertEquals(i + 1, seen.size(), "one completion per wake-up");
                long[] c = seen.get(i);
                assertEquals(1, c[0]);
                assertTrue((c[1] & Epoll.EPOLLIN) != 0, "ready mask " + c[1]);
                assertTrue((c[2] & IoUring.CQE_F_MORE) != 0, "still armed");
            }
            assertEquals(1, ring.outstanding(), "a multishot poll is one outstanding operation");
            ring.cancel(1, 2);
            ring.submitAndWait(2);
            Collected c = new Collected();
            ring.reap(c);
            assertEquals(-Errno.ECANCELED, c.result(1));
            assertEquals(0, c.result(2), "the cancel found it");
            assertEquals(0, ring.outstanding());
            assertEquals(3, ev.read(), "the counter kept every signal");
        }
    }

    /**
     * More wake-ups than the CQ has room for between two reaps end a multishot poll: the kernel keeps the completion
     * that did not fit — its last one, without F_MORE — in its overflow list, which only an io_uring_enter with
     * GETEVENTS empties. reap used to read the CQ alone: the owner saw the two completions that fit, both flagged
     * F_MORE, never the last one, and took the poll for armed while it was over, so every later wake-up was lost.
     */
    @Test
    void aMultishotPollEndedByAFullCqDeliversItsLastCompletionThroughReap() throws Exception {
        try (IoUring ring = IoUring.create(1, 2);
                EventFd ev = EventFd.create(true)) {
            assertEquals(2, ring.cqEntries());
            ring.pollMultishot(ev.fd(), Epoll.EPOLLIN, 1);
            ring.submit();
            for (int i = 0; i < 4; i++) { // each write is a wake-up; the CQ holds two
                ev.signal();
                Thread.sleep(2);
            }
            List<long[]> seen = new ArrayList<>();
            ring.reap((ud, res, flags) -> seen.add(new long[] {ud, res, flags}));
            assertEquals(3, seen.size(), "the two that fit and the one the kernel kept aside");
            assertTrue((seen.get(0)[2] & IoUring.CQE_F_MORE) != 0);
            assertTrue((seen.get(1)[2] & IoUring.CQE_F_MORE) != 0);
            assertEquals(0, seen.get(2)[2] & IoUring.CQE_F_MORE, "the last one says the poll is over");
            assertTrue((seen.get(2)[1] & Epoll.EPOLLIN) != 0, "with the ready mask: " + seen.get(2)[1]);
            assertEquals(0, ring.outstanding());

            // The owner re-arms it, and hears the next wake-up.
            ev.read();
            seen.clear();
            ring.pollMultishot(ev.fd(), Epoll.EPOLLIN, 2);
            ring.submit();
            ev.signal();
            ring.submitAndWait(1);
            ring.reap((ud, res, flags) -> seen.add(new long[] {ud, res, flags}));
            assertEquals(1, seen.size());
            assertEquals(2, seen.get(0)[0]);
            assertTrue((seen.get(0)[2] & IoUring.CQE_F_MORE) != 0, "armed again");
            ring.cancel(2, 3);
            ring.submitAndWait(2);
            ring.reap((ud, res, flags) -> {});
            assertEquals(0, ring.outstanding());
        }
    }

    @Test
    void oneShotPollOfABlockingEventFdAndCancellingWhatIsAlreadyDone() throws Exception {
        try (IoUring ring = IoUring.create(4);
                EventFd ev = EventFd.create(false)) {
            ring.poll(ev.fd(), Epoll.EPOLLIN, 5);
            ring.submit();
            ev.signal();
            ring.submitAndWait(1);
            Collected c = new Collected();
            ring.reap(c);
            assertTrue((c.result(5) & Epoll.EPOLLIN) != 0);
            ring.cancel(5, 6); // nothing left to cancel
            ring.submitAndWait(1);
            ring.reap(c);
            assertEquals(-Errno.ENOENT, c.result(6));
        }
    }

    @Test
    void failedOperationsReportTheirErrnoAndNameTheOperation() throws Exception {
        Path file = dir.resolve("ro.raw");
        Files.write(file, new byte[8192]);
        try (Arena a = Arena.ofConfined();
                IoUring ring = IoUring.create(4);
                Fd wronly = FileIo.open(file, FileIo.O_WRONLY);
                Fd direct = FileIo.open(file, FileIo.O_RDWR | FileIo.O_DIRECT)) {
            MemorySegment buf = FileIo.directBuffer(a, 8192);
            ring.read(wronly, buf.asSlice(0, 512), 0, 1); // not open for reading
            ring.readv(direct, oneEntry(a, buf.asSlice(0, 512)), 1, 1, 2); // O_DIRECT at a misaligned offset
            ring.submitAndWait(2);
            Collected c = new Collected();
            ring.reap(c);
            assertEquals(-Errno.EBADF, c.result(1));
            int misaligned = (int) c.result(2);
            LinuxException e =
                    assertThrows(LinuxException.class, () -> IoUring.check(IoUring.OP_READ, (int) c.result(1), "fd 3"));
            assertEquals(Errno.EBADF, e.errno());
            assertEquals("io_uring READ", e.call());
            assertTrue(e.getMessage().startsWith("io_uring READ(fd 3) failed: EBADF"), e.getMessage());
            assertEquals(
                    Errno.EINVAL,
                    assertThrows(LinuxException.class, () -> IoUring.check(IoUring.OP_READV, misaligned, null))
                            .errno());
            assertEquals(4096, IoUring.check(IoUring.OP_WRITE, 4096, null));
        }
    }

    /**
     * Two CPUs this process may use: the ring's thread spins on the first, the thread that makes the poll ready runs
     * on the second. On one CPU the second thread could only run while the first is off its CPU, and the kernel runs
     * pending task work whenever a thread returns to user space — so the pending state would never be seen.
     */
    private static int[] twoCpus() throws LinuxException {
        java.util.BitSet allowed = Affinity.ofCurrentThread();
        int a = allowed.nextSetBit(0);
        int b = a < 0 ? -1 : allowed.nextSetBit(a + 1);
        assumeTrue(b >= 0, "needs two CPUs to watch task work from another one; this process may use " + allowed);
        return new int[] {a, b};
    }

    /** Runs {@code body} on a new platform thread pinned to {@code cpu} (the test runner's thread stays unpinned). */
    private static void onCpu(int cpu, Body body) throws Exception {
        Exception[] failed = new Exception[1];
        Error[] error = new Error[1];
        Thread t = Thread.ofPlatform().start(() -> {
            try {
                Affinity.pinCurrentThread(cpu);
                body.run();
            } catch (Exception e) {
                failed[0] = e;
            } catch (Error e) {
                error[0] = e; // assertion failures
            }
        });
        t.join();
        if (error[0] != null) {
            throw error[0];
        }
        if (failed[0] != null) {
            throw failed[0];
        }
    }

    private interface Body {
        void run() throws Exception;
    }

    /**
     * On the calling thread, the ring's: arms a poll of {@code efd}, has a thread on {@code otherCpu} make it ready,
     * and spins without a system call until the completion shows up, as task work pending (true) or as a posted
     * completion (false).
     */
    private static boolean pendingOrPosted(IoUring ring, EventFd efd, int otherCpu) throws Exception {
        ring.poll(efd.fd(), Epoll.EPOLLIN, 7);
        ring.submit();
        Thread signaller = Thread.ofPlatform().start(() -> {
            try {
                Affinity.pinCurrentThread(otherCpu);
                // after the ring's thread has returned from start() (which waits in the kernel for the new thread)
                // and spins below
                Thread.sleep(20);
                efd.signal();
            } catch (LinuxException | InterruptedException e) {
                throw new IllegalStateException(e);
            }
        });
        long deadline = System.nanoTime() + 10_000_000_000L;
        boolean pending;
        while (!(pending = ring.taskWorkPending()) && ring.ready() == 0) {
            assertTrue(System.nanoTime() - deadline < 0, "the poll completed neither way within 10 s");
        }
        signaller.join();
        return pending;
    }

    @Test
    @Timeout(60)
    void aCooperativeRingLeavesCompletionsForItsThreadsNextSystemCall() throws Exception {
        int[] cpu = twoCpus();
        try (IoUring ring = IoUring.create(4, 0, true)) {
            Require.that(ring.cooperative(), "this kernel has no IORING_SETUP_COOP_TASKRUN (5.19+)");
            Collected c = new Collected();
            int rounds = 20;
            int[] pendingSeen = {0};
            onCpu(cpu[0], () -> {
                for (int i = 0; i < rounds; i++) {
                    try (EventFd efd = EventFd.create(true)) {
                        if (pendingOrPosted(ring, efd, cpu[1])) {
                            pendingSeen[0]++;
                        }
                        // a system call of this thread (join's futex may have been one) posts it; this one surely does
                        ring.runTaskWork();
                        assertFalse(ring.taskWorkPending());
                        assertEquals(1, ring.reap(c));
                    }
                }
            });
            // the thread may still enter the kernel while it spins (a timer tick, a safepoint, another thread taking
            // its CPU for a moment), and the kernel runs the task work on the way back: not every round sees it
            assertTrue(pendingSeen[0] > 0, "task work was never seen pending in " + rounds + " rounds");
            assertEquals(rounds, c.done.size());
            assertTrue(c.done.stream().allMatch(d -> d[0] == 7 && (d[1] & Epoll.EPOLLIN) != 0));
        }
    }

    @Test
    @Timeout(60)
    void aPlainRingPostsAnotherThreadsCompletionWithoutItsThreadEnteringTheKernel() throws Exception {
        int[] cpu = twoCpus();
        try (IoUring ring = IoUring.create(4, 0, false);
                EventFd efd = EventFd.create(true)) {
            assertFalse(ring.cooperative());
            onCpu(cpu[0], () -> assertFalse(pendingOrPosted(ring, efd, cpu[1]))); // posted, never pending
            Collected c = new Collected();
            assertEquals(1, ring.reap(c));
        }
    }

    @Test
    void explainsWhyIoUringIsUnavailable() {
        String perm = IoUring.explain(new LinuxException("io_uring_setup", "2 entries", Errno.EPERM));
        assertTrue(perm.startsWith("io_uring is not available: io_uring_setup(2 entries) failed: EPERM"), perm);
        assertTrue(perm.contains("kernel.io_uring_disabled") || perm.contains("seccomp"), perm);
        String nosys = IoUring.explain(new LinuxException("io_uring_setup", null, Errno.ENOSYS));
        assertTrue(nosys.contains("without io_uring"), nosys);
        assertTrue(IoUring.explain(new LinuxException("io_uring_setup", null, Errno.ENOMEM))
                .contains("ulimit -l"));
    }

    @Test
    void waitingForMoreThanIsOutstandingIsRefused() throws Exception {
        try (IoUring ring = IoUring.create(2)) {
            assertThrows(IllegalArgumentException.class, () -> ring.submitAndWait(1));
            ring.nop(1);
            ring.nop(2);
            assertThrows(IllegalArgumentException.class, () -> ring.submitAndWait(3));
            assertEquals(2, ring.unsubmitted());
            assertEquals(2, ring.submitAndWait(2));
            assertEquals(0, ring.unsubmitted());
            assertEquals(2, ring.ready());
            Collected c = new Collected();
            assertEquals(2, ring.reap(c));
            assertEquals(0, c.result(1));
            assertEquals(0, ring.reap(c));
            // The ring wraps: many more operations than entries, in rounds.
            for (int round = 0; round < 100; round++) {
                ring.nop(round);
                ring.submitAndWait(1);
                assertEquals(1, ring.reap(c));
            }
            assertEquals(102, c.done.size());
        }
    }
}
