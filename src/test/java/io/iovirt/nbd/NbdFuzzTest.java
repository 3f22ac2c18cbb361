// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.storage.RawImage;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.net.StandardProtocolFamily;
import java.net.UnixDomainSocketAddress;
import java.nio.ByteBuffer;
import java.nio.channels.SocketChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Comparator;
import java.util.List;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.logging.Handler;
import java.util.logging.Level;
import java.util.logging.LogRecord;
import java.util.logging.Logger;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;

/**
 * Fuzzes the NBD server's handshake (options, export names, INFO/GO requests, metadata contexts) and request
 * parser (commands, flags, offsets, lengths, write payloads): the fuzzer's bytes are everything a client sends on
 * one connection to a real {@link NbdServer} with a writable and a read-only export. Whatever the client sends, the
 * server answers or disconnects that client: no internal error (an ERROR log line: a RuntimeException in the
 * connection), the connection ends within a bounded time once the client has sent everything, no connection is
 * left behind, and no write lands outside an image. Seeds: src/test/resources/io/iovirt/nbd/NbdFuzzTestInputs/.
 */
class NbdFuzzTest {
    /** Bounded so the whole input fits the socket buffer: the server never waits on a client that is still writing. */
    static final int MAX_INPUT = 64 << 10;

    static final long IMAGE = 1 << 20;
    static Path dir;
    static NbdServer server;
    static RawImage disk;
    static RawImage ro;
    static final List<String> errors = new CopyOnWriteArrayList<>();
    static Handler capture;
    static ScheduledExecutorService watchdog;

    @BeforeAll
    static void setUp() throws IOException {
        Path shm = Path.of("/dev/shm");
        dir = Files.isDirectory(shm) && Files.isWritable(shm)
                ? Files.createTempDirectory(shm, "nbdfuzz")
                : Files.createTempDirectory("nbdfuzz");
        for (String n : List.of("disk.img", "ro.img")) {
            try (RandomAccessFile f = new RandomAccessFile(dir.resolve(n).toFile(), "rw")) {
                f.setLength(IMAGE);
            }
        }
        disk = RawImage.open(dir.resolve("disk.img"), false, false);
        ro = RawImage.open(dir.resolve("ro.img"), true, false);
        server = NbdServer.startUnix(dir.resolve("nbd.sock"), NbdServer.DEFAULT_MAX_CONNECTIONS);
        server.addExport(new NbdExport("disk", disk, false));
        server.addExport(new NbdExport("ro", ro, true));
        capture = new Handler() {
            @Override
            public void publish(LogRecord r) {
                if (r.getLevel().intValue() >= Level.SEVERE.intValue()) {
                    errors.add(r.getMessage());
                }
            }

            @Override
            public void flush() {}

            @Override
            public void close() {}
        };
        Logger.getLogger("io.iovirt.nbd").addHandler(capture);
        // the server's own log lines (a fuzzer makes millions) would drown the run's output
        Logger.getLogger("io.iovirt.nbd").setLevel(Level.SEVERE);
        watchdog = Executors.newSingleThreadScheduledExecutor(
                r -> Thread.ofPlatform().daemon().name("nbd-fuzz watchdog").unstarted(r));
    }

    @AfterAll
    static void tearDown() throws IOException {
        server.close();
        disk.close();
        ro.close();
        watchdog.shutdownNow();
        Logger.getLogger("io.iovirt.nbd").removeHandler(capture);
        try (var s = Files.walk(dir)) {
            s.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        }
    }

    @FuzzTest(maxDuration = "10s")
    void connection(byte[] data) throws Exception {
        int n = Math.min(data.length, MAX_INPUT);
        errors.clear();
        AtomicBoolean timedOut = new AtomicBoolean();
        try (SocketChannel ch = SocketChannel.open(StandardProtocolFamily.UNIX)) {
            ch.connect(UnixDomainSocketAddress.of(dir.resolve("nbd.sock")));
            ScheduledFuture<?> dog = watchdog.schedule(
                    () -> {
                        timedOut.set(true);
                        try {
                            ch.close();
                        } catch (IOException e) {
                            // closing
                        }
                    },
                    30,
                    TimeUnit.SECONDS);
            try {
                ByteBuffer out = ByteBuffer.wrap(data, 0, n);
                try {
                    while (out.hasRemaining()) {
                        ch.write(out);
                    }
                    ch.shutdownOutput();
                } catch (IOException disconnected) {
                    // the server may hang up on a protocol violation before it read everything
                }
                ByteBuffer in = ByteBuffer.allocate(64 << 10);
                try {
                    while (ch.read(in.clear()) >= 0) {
                        // replies are not the oracle; that the server answers or hangs up is
                    }
                } catch (IOException disconnected) {
                    // reset by the server, or closed by the watchdog
                }
            } finally {
                dog.cancel(false);
            }
        }
        assertTrue(!timedOut.get(), "the server neither answered nor hung up within 30 s of the client's last byte");
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(30);
        while (server.connectionCount() > 0 && System.nanoTime() < deadline) {
            Thread.sleep(1);
        }
        assertEquals(0, server.connectionCount(), "a connection outlived its client");
        assertTrue(errors.isEmpty(), "internal error: " + errors);
        assertEquals(IMAGE, disk.size(), "the image did not change size");
        assertEquals(IMAGE, Files.size(dir.resolve("disk.img")), "no write beyond the image");
    }
}
