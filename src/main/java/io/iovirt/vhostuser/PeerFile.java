// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.Mmap;
import java.time.Duration;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

/**
 * A descriptor the frontend sent as shared memory — guest RAM (SET_MEM_TABLE, ADD_MEM_REG), the dirty log
 * (SET_LOG_BASE), the in-flight memory (SET_INFLIGHT_FD) — checked before it is mapped: a regular file on tmpfs or
 * hugetlbfs (a memfd is either) that holds the whole range.
 *
 * <p>The file system matters because queue threads — shared by several tenants on a net poll thread — touch these
 * mappings: a page fault on a file of a FUSE mount the frontend serves waits for its daemon, for ever if it never
 * answers, and a file on a disk file system can be truncated by anyone with access to it (a SIGBUS) and has its
 * pages written back to disk. Even the checks can wait on such a file system (statx and fstatfs go to a FUSE daemon),
 * so they run on a helper thread and give up after {@link #CHECK_TIMEOUT}: the message is refused, and the session
 * thread — the only one serving that frontend — never waits on the frontend's file system.
 */
final class PeerFile {
    /** How long the file system behind a frontend's descriptor may take to answer statx and fstatfs. */
    static final Duration CHECK_TIMEOUT = Duration.ofSeconds(5);

    /** Daemon threads: one left waiting on a file system that never answers must not keep the process alive. */
    private static final ExecutorService CHECKS = Executors.newCachedThreadPool(
            Thread.ofPlatform().daemon().name("iovirt-peer-file-check-", 0).factory());

    /**
     * Checks running at once, in the whole process. A check left waiting on a file system that never answers keeps
     * its thread (a stack, a copy of the descriptor) until the file system answers or its FUSE connection is aborted;
     * a frontend that reconnects and sends such descriptors again and again would otherwise pile up threads without
     * end. Past this, descriptors are refused at once, with the reason.
     */
    static final int MAX_CHECKS = 128;

    /**
     * Checks running at once for one device (one socket, whichever of its frontends sent them), so that one tenant's
     * hanging file system cannot take the whole process's {@link #MAX_CHECKS} and get other tenants' memory tables
     * refused: it would need {@code MAX_CHECKS / MAX_CHECKS_PER_DEVICE} devices of its own. A frontend whose file
     * system answers never has a check waiting for more than a moment, so two are plenty.
     */
    static final int MAX_CHECKS_PER_DEVICE = 2;

    private static final Semaphore RUNNING = new Semaphore(MAX_CHECKS);

    /** One device's share of the checks ({@link #MAX_CHECKS_PER_DEVICE}); outlives its connections. */
    static final class Quota {
        private final Semaphore running = new Semaphore(MAX_CHECKS_PER_DEVICE);

        /** Checks of this device still waiting (a test's view). */
        int waiting() {
            return MAX_CHECKS_PER_DEVICE - running.availablePermits();
        }
    }

    private PeerFile() {}

    private record Facts(FileIo.Stat stat, long fsType) {}

    /**
     * Checks that {@code fd} is a regular file on tmpfs or hugetlbfs holding [offset, offset+size); both are
     * non-negative.
     *
     * @param quota  the device's share of the checks that may wait at once
     * @param what   names the message and its values, for the error
     * @param remedy what the frontend should send instead, for the error
     */
    static void requireSharedMemory(Quota quota, Fd fd, String what, long offset, long size, String remedy)
            throws ProtocolException {
        Facts facts = facts(quota, fd, what, remedy);
        FileIo.Stat st = facts.stat();
        if (!st.isRegularFile()) {
            throw new ProtocolException(what + ": the descriptor is not a shared memory file (mode 0"
                    + Integer.toOctalString(st.mode()) + "); " + remedy);
        }
        if (facts.fsType() != FileIo.TMPFS_MAGIC && facts.fsType() != FileIo.HUGETLBFS_MAGIC) {
            throw new ProtocolException(what + ": the file is on a file system of type 0x"
                    + Long.toHexString(facts.fsType()) + ", not tmpfs or hugetlbfs; " + remedy);
        }
        if (offset > st.size() - size) {
            throw new ProtocolException(what + ": extends past the end of its " + st.size() + "-byte file");
        }
    }

    /** statx and fstatfs of the file, on a helper thread with its own copy of the descriptor. */
    private static Facts facts(Quota quota, Fd fd, String what, String remedy) throws ProtocolException {
        if (!quota.running.tryAcquire()) {
            throw new ProtocolException(what + ": " + MAX_CHECKS_PER_DEVICE + " earlier descriptor checks of this"
                    + " device's frontend are still waiting on file systems that do not answer (FUSE files sent as"
                    + " shared memory?); " + remedy);
        }
        if (!RUNNING.tryAcquire()) {
            quota.running.release();
            throw new ProtocolException(what + ": " + MAX_CHECKS + " earlier descriptor checks are still waiting on"
                    + " file systems that do not answer (FUSE files sent as shared memory?); " + remedy);
        }
        Fd copy;
        try {
            copy = fd.dup();
        } catch (LinuxException e) {
            RUNNING.release();
            quota.running.release();
            throw new ProtocolException(what + ": " + e.getMessage(), e);
        }
        Future<Facts> f;
        try {
            f = CHECKS.submit(() -> {
                try (copy) {
                    return new Facts(FileIo.stat(copy), FileIo.filesystemType(copy));
                } finally {
                    RUNNING.release();
                    quota.running.release();
                }
            });
        } catch (RuntimeException | OutOfMemoryError e) { // rejected, or no thread could be created
            RUNNING.release();
            quota.running.release();
            copy.close();
            throw new ProtocolException(what + ": cannot check the descriptor: " + e, e);
        }
        try {
            return f.get(CHECK_TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (TimeoutException e) {
            // The helper stays in its system call until the file system answers (or its connection is aborted);
            // it holds only its own copy of the descriptor.
            throw new ProtocolException(what + ": the file system behind the descriptor did not answer statx/fstatfs"
                    + " within " + CHECK_TIMEOUT.toSeconds() + " s (a FUSE file whose daemon does not answer?); "
                    + remedy);
        } catch (ExecutionException e) {
            Throwable cause = e.getCause();
            throw new ProtocolException(what + ": " + cause.getMessage(), cause);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ProtocolException(what + ": interrupted while checking the descriptor");
        }
    }

    /** Maps [offset, offset+size) of a checked file shared, read-write, with {@code extraFlags} (e.g. MAP_NORESERVE). */
    static Mmap.Mapping mapShared(Fd fd, String what, long offset, long size, int extraFlags) throws ProtocolException {
        try {
            return Mmap.map(fd, offset, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED | extraFlags);
        } catch (LinuxException e) {
            throw new ProtocolException(what + ": " + e.getMessage(), e);
        }
    }
}
