// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.devices.blk.BlkAllocationTest;
import io.iovirt.nbd.NbdServerTest.Answer;
import io.iovirt.nbd.NbdServerTest.RawClient;
import io.iovirt.storage.DiskImage;
import io.iovirt.storage.ImageFormat;
import io.iovirt.storage.Images;
import io.iovirt.testing.AllocationRun;
import java.lang.management.ManagementFactory;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Pins "no allocation per request" on the NBD transmission phase: an in-process {@link NbdServer} on a UNIX socket
 * and on loopback TCP (both iovirt's {@code linux.UnixSocketChannel}), a raw file export, and a
 * client in this JVM ({@link RawClient}) sending 4 KiB READs, WRITEs, FLUSHes and BLOCK_STATUSes one at a time and
 * 8 at a time (more than the connection's {@value NbdConnection#WORKERS} slots: the reader parks for free slots,
 * requests go through the workers), with simple and with structured replies. The heap bytes the server allocates are
 * counted by the JVM on the connection's threads — its reader and its workers
 * ({@code ThreadMXBean.getThreadAllocatedBytes}) — over {@value #MEASURED} requests after a warm-up; the client's
 * allocation is on this thread and not counted. Byte counts do not depend on timing.
 *
 * <p>As {@code BlkAllocationTest} it runs in a child JVM with {@code -XX:-DoEscapeAnalysis}, so nothing is
 * scalar-replaced and the figure does not depend on what C2 inlined this run. What remains there is the JDK's: one
 * 40-byte captured-errno segment per FFM syscall ({@code BlkAllocationTest}'s class comment) — the image's (preadv,
 * pwritev, fdatasync; two lseeks for a BLOCK_STATUS) and, over either socket, the recvmsg of the header, the
 * recvmsg of a WRITE's payload and the reply's sendmsg. (TCP connections were the JDK's SocketChannel, which makes
 * its syscalls without one, until they became FFM sockets for the kernel's SHUT_RD: {@code NbdChannel#inputOf}.)
 * Each case's bound is those plus 8 bytes, so one more object of ours per request (16 bytes at least) fails.
 *
 * <p>Measured, bytes a request with escape analysis off / in the default JVM. Before: TCP READ and WRITE 64 / 24 — the
 * 24 the varargs array of {@code reply(h, buf)}, which escape analysis did not remove — FLUSH 96 / 56 (32 more: the
 * node of the worker queue's condition wait), BLOCK_STATUS 304 / 152 ({@code FileIo.seek} built its error message on
 * success); UNIX 400-720 / 200-440 (segments the channel made per call). After: exactly the JDK's part above with
 * escape analysis off (UNIX 120 READ and FLUSH, 160 WRITE, 184 BLOCK_STATUS; TCP 40, BLOCK_STATUS 104), and in the
 * default JVM 0 for READ, WRITE and FLUSH once C2 compiled the path (24 for BLOCK_STATUS: the 24-byte
 * {@code DiskImage.Extent} record the image API returned per extent, escape analysis or not). Since the image API
 * packs an extent into a long ({@code DiskImage.Extent}) BLOCK_STATUS has the same bound as the others: the JDK's
 * segments alone. {@link #main} prints the per-case figures.
 */
class NbdAllocationTest {
    private static final com.sun.management.ThreadMXBean THREADS =
            (com.sun.management.ThreadMXBean) ManagementFactory.getThreadMXBean();
    private static final int BLOCK = 4096;
    private static final long IMAGE_BYTES = 16 << 20;
    private static final byte PATTERN = 0x5a;
    private static final int WARMUP = 3000;
    private static final int MEASURED = 2000;

    @TempDir
    Path dir;

    record Case(boolean unix, boolean structured, int command, int depth) {
        /** The FFM syscalls the server makes for one request (see the class comment). */
        int syscalls() {
            int image = command == Nbd.CMD_BLOCK_STATUS ? 2 : 1; // SEEK_DATA and SEEK_HOLE in a data block
            int socket = 2 + (command == Nbd.CMD_WRITE ? 1 : 0); // UNIX and TCP: both UnixSocketChannels
            return image + socket;
        }

        /** The JDK's bytes for this request, plus less than one object (8 bytes): see the class comment. */
        double bound() {
            return syscalls() * BlkAllocationTest.JDK_BYTES_PER_SYSCALL + 8;
        }

        @Override
        public String toString() {
            String cmd = switch (command) {
                case Nbd.CMD_READ -> "read";
                case Nbd.CMD_WRITE -> "write";
                case Nbd.CMD_FLUSH -> "flush";
                default -> "block-status";
            };
            return (unix ? "unix" : "tcp") + " " + (structured ? "structured" : "simple") + " " + cmd + " depth "
                    + depth;
        }
    }

    static List<Case> cases() {
        List<Case> all = new ArrayList<>();
        for (boolean unix : new boolean[] {true, false}) {
            for (boolean structured : new boolean[] {false, true}) {
                for (int cmd : new int[] {Nbd.CMD_READ, Nbd.CMD_WRITE, Nbd.CMD_FLUSH, Nbd.CMD_BLOCK_STATUS}) {
                    if (cmd == Nbd.CMD_BLOCK_STATUS && !structured) {
                        continue; // needs a metadata context, which needs structured replies
                    }
                    for (int depth : new int[] {1, 8}) {
                        all.add(new Case(unix, structured, cmd, depth));
                    }
                }
            }
        }
        return all;
    }

    @Test
    void steadyStateRequestsAllocateNothingButTheJdksSyscallSegments() throws Exception {
        AllocationRun.check(
                NbdAllocationTest.class,
                dir,
                "check",
                cases().size(),
                Duration.ofMinutes(15),
                "requests allocated more than their bound");
    }

    /**
     * Measures every case: {@code NbdAllocationTest DIR [check]} prints bytes per request and, with {@code check},
     * exits 1 when one is over its bound. Run it with and without {@code -XX:-DoEscapeAnalysis} (the class comment
     * has both figures).
     */
    public static void main(String[] args) throws Exception {
        Path dir = Path.of(args[0]);
        boolean check = args.length > 1 && args[1].equals("check");
        Path img = dir.resolve("alloc.raw");
        byte[] fill = new byte[(int) IMAGE_BYTES];
        Arrays.fill(fill, PATTERN);
        Files.write(img, fill);
        int over = 0;
        for (Case c : cases()) {
            long t0 = System.nanoTime();
            double perRequest = measure(c, img, dir);
            long ms = (System.nanoTime() - t0) / 1_000_000;
            boolean ok = !check || perRequest < c.bound();
            over += ok ? 0 : 1;
            System.out.printf(
                    "alloc %-36s %7.2f bytes/request (bound %5.1f, %d ms)%s%n",
                    c, perRequest, c.bound(), ms, ok ? "" : "  OVER");
        }
        System.exit(over == 0 ? 0 : 1);
    }

    private static double measure(Case c, Path img, Path dir) throws Exception {
        Path sock = dir.resolve("alloc.sock");
        try (DiskImage image = Images.open(img, ImageFormat.RAW, false, false);
                NbdServer s = c.unix() ? NbdServer.startUnix(sock, 1) : NbdServer.startTcp("127.0.0.1", 0, 1);
                RawClient client = c.unix() ? RawClient.unix(sock) : RawClient.tcp(s.port())) {
            s.addExport(new NbdExport("a", image, false));
            if (c.structured()) {
                client.structuredReplies();
                if (c.command() == Nbd.CMD_BLOCK_STATUS) {
                    client.baseAllocation("a");
                }
            }
            client.go("a");
            long[] ids = serverThreads(s);
            Driver d = new Driver(c, client);
            d.requests(WARMUP);
            // the least of three windows: a per-request object shows in every window, a one-off of the JIT (a
            // deoptimization runs a few requests in the interpreter, which allocates) in one
            double best = Double.MAX_VALUE;
            for (int window = 0; window < 3; window++) {
                long before = allocated(ids);
                d.requests(MEASURED);
                best = Math.min(best, (double) (allocated(ids) - before) / MEASURED);
            }
            return best;
        }
    }

    /** The connection's thread and its workers (the only threads that serve its requests). */
    private static long[] serverThreads(NbdServer s) {
        String prefix = "nbd " + s.address() + " #";
        long[][] ids = new long[1][];
        io.iovirt.testing.Await.until(Duration.ofSeconds(20), "the connection's threads to start", () -> {
            ids[0] = Thread.getAllStackTraces().keySet().stream()
                    .filter(t -> t.getName().startsWith(prefix))
                    .mapToLong(Thread::threadId)
                    .toArray();
            return ids[0].length == 1 + NbdConnection.WORKERS;
        });
        return ids[0];
    }

    private static long allocated(long[] ids) {
        long sum = 0;
        for (long b : THREADS.getThreadAllocatedBytes(ids)) {
            sum += b;
        }
        return sum;
    }

    /** The client: {@code depth} requests sent, then their replies read and checked. */
    private static final class Driver {
        final Case c;
        final RawClient client;
        final byte[] payload = new byte[BLOCK];
        final long blocks = IMAGE_BYTES / BLOCK;
        long n;

        Driver(Case c, RawClient client) {
            this.c = c;
            this.client = client;
            Arrays.fill(payload, PATTERN); // writes keep the image's pattern, so reads can check it
        }

        void requests(int count) throws Exception {
            for (int done = 0; done < count; done += c.depth()) {
                long first = client.cookie + 1;
                for (int i = 0; i < c.depth(); i++) {
                    long offset = ((n++ * 7919) % blocks) * BLOCK;
                    switch (c.command()) {
                        case Nbd.CMD_WRITE -> client.send(Nbd.CMD_WRITE, 0, offset, BLOCK, payload);
                        case Nbd.CMD_FLUSH -> client.send(Nbd.CMD_FLUSH, 0, 0, 0, null);
                        default -> client.send(c.command(), 0, offset, BLOCK, null);
                    }
                }
                long seen = 0;
                for (int i = 0; i < c.depth(); i++) {
                    Answer a = client.answer(c.structured(), c.command() == Nbd.CMD_READ ? BLOCK : 0);
                    assertEquals(0, a.error(), c + ": request " + a.cookie());
                    long k = a.cookie() - first;
                    assertTrue(k >= 0 && k < c.depth() && (seen & (1L << k)) == 0, c + ": reply to " + a.cookie());
                    seen |= 1L << k;
                    if (c.command() == Nbd.CMD_READ) {
                        assertTrue(Arrays.equals(payload, a.data()), c + ": read " + a.cookie() + " data");
                    } else if (c.command() == Nbd.CMD_BLOCK_STATUS) {
                        // context id, then one extent: 4096 bytes of data (not a hole, not zero)
                        assertEquals(12, a.data().length, c + ": block status descriptors");
                    }
                }
            }
        }
    }
}
