// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import io.iovirt.vhostuser.LogCapture;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import org.junit.jupiter.api.Test;

/**
 * An open that has not returned (its file system does not answer) is in the daemon's log, not only in its failed
 * request's answer: when its request gives up on it, and when the daemon stops while it is still under way. Neither
 * was logged: the daemon's log said nothing of an add whose open never returns. And an open that returns after its
 * request gave up hears so ({@link ImageOpens.Wanted}) before it starts anything.
 */
class ImageOpensTest {
    private static final Path IMAGE = Path.of("/hung/disk.raw");

    @Test
    void anOpenGivenUpOnIsLoggedThenAndWhenTheDaemonStops() throws Exception {
        ImageOpens opens = new ImageOpens();
        // the open returns only when the test lets it: the request's wait runs out first whatever the machine's load
        opens.waitFor(Duration.ofMillis(100));
        CountDownLatch answer = new CountDownLatch(1);
        AtomicBoolean closed = new AtomicBoolean();
        AtomicBoolean checked = new AtomicBoolean();
        AtomicBoolean started = new AtomicBoolean();
        AtomicInteger released = new AtomicInteger();
        try (LogCapture log = LogCapture.start("io.iovirt.daemon")) {
            RpcException e = assertThrows(
                    RpcException.class,
                    () -> opens.run(
                            "blk.add vm1",
                            IMAGE,
                            wanted -> {
                                try {
                                    answer.await();
                                } catch (InterruptedException ie) {
                                    throw new java.io.InterruptedIOException("the test ended");
                                }
                                checked.set(true);
                                wanted.check(); // given up on: throws, so nothing is started
                                started.set(true);
                                return () -> closed.set(true);
                            },
                            released::incrementAndGet));
            assertEquals(RpcException.FAILED, e.code(), e.getMessage());
            assertTrue(
                    log.all().stream()
                            .anyMatch(l -> l.contains("blk.add vm1: the open of image " + IMAGE + " has not returned")
                                    && l.contains("image open " + IMAGE)),
                    "given up on, and not logged: " + log.all());
            assertEquals(0, released.get(), "the claim stays until the open returns");

            opens.close(); // the daemon stops
            assertTrue(
                    log.all().stream()
                            .anyMatch(l -> l.contains("stopping while image opens have not returned: " + IMAGE)
                                    && l.contains("blk.add vm1")),
                    "the daemon stopped with an open under way, and did not say so: " + log.all());

            answer.countDown(); // the open returns late: it hears it was given up on, the claim is released once
            Await.until(Duration.ofSeconds(60), "the late open's claim released", () -> released.get() == 1);
            assertTrue(checked.get() && !started.get() && !closed.get(), "the late open started nothing");
            assertTrue(log.awaitLine("its id and socket are free again").contains("its export was not started"));
            assertEquals(1, released.get());
        }
    }

    @Test
    void stoppingWithNoOpenUnderWayLogsNothing() {
        ImageOpens opens = new ImageOpens();
        try (LogCapture log = LogCapture.start("io.iovirt.daemon")) {
            opens.close();
            assertFalse(
                    log.all().stream().anyMatch(l -> l.contains("image opens")),
                    log.all().toString());
        }
    }

    /** Long enough that no request gives up in a test: the opens return when the test lets them (latches). */
    private static final Duration UNTIL_LET = Duration.ofMinutes(10);

    /**
     * {@link ImageOpens#MAX_OPENS} opens under way, none given up on: one more add waits for a place, and opens once
     * one of them has returned; never more than {@link ImageOpens#MAX_OPENS} opens at once. It was refused at once,
     * saying the file systems did not answer.
     */
    @Test
    void anAddWaitsForAPlaceWhileTheOpensUnderWayAreNotGivenUpOn() throws Exception {
        ImageOpens opens = new ImageOpens();
        opens.waitFor(UNTIL_LET);
        CountDownLatch[] let = new CountDownLatch[ImageOpens.MAX_OPENS + 1];
        Arrays.setAll(let, i -> new CountDownLatch(1));
        CountDownLatch entered = new CountDownLatch(ImageOpens.MAX_OPENS);
        AtomicInteger atOnce = new AtomicInteger();
        AtomicInteger most = new AtomicInteger();
        AtomicInteger released = new AtomicInteger();
        ExecutorService requests = Executors.newCachedThreadPool();
        try {
            List<Future<AutoCloseable>> adds = new ArrayList<>();
            for (int i = 0; i <= ImageOpens.MAX_OPENS; i++) {
                int n = i;
                adds.add(requests.submit(() -> opens.run(
                        "blk.add vm" + n,
                        Path.of("/local/disk" + n + ".raw"),
                        wanted -> {
                            most.accumulateAndGet(atOnce.incrementAndGet(), Math::max);
                            entered.countDown();
                            try {
                                await(let[n]);
                            } finally {
                                atOnce.decrementAndGet();
                            }
                            wanted.check();
                            return () -> {};
                        },
                        released::incrementAndGet)));
                if (i == ImageOpens.MAX_OPENS - 1) {
                    assertTrue(entered.await(60, TimeUnit.SECONDS), "the first opens did not start");
                }
            }
            Future<AutoCloseable> last = adds.get(ImageOpens.MAX_OPENS);
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the last add waiting for a place, or answered: " + answer(last),
                    () -> last.isDone() || waitingForAPlace());
            assertFalse(last.isDone(), "refused while the opens under way were not given up on: " + answer(last));
            assertEquals(ImageOpens.MAX_OPENS, atOnce.get(), "opens under way");

            let[0].countDown(); // one open returns: the last add takes its place
            assertNotNull(adds.get(0).get(60, TimeUnit.SECONDS));
            let[ImageOpens.MAX_OPENS].countDown();
            assertNotNull(last.get(60, TimeUnit.SECONDS), "the last add opened its image");
            letAll(let);
            allOpened(adds);
            assertEquals(ImageOpens.MAX_OPENS, most.get(), "more opens at once than places");
            assertEquals(0, released.get(), "a claim released although its add succeeded");
        } finally {
            letAll(let);
            requests.shutdownNow();
        }
    }

    /**
     * Adds waiting for a place get one in the order they came: each place that frees goes to the add that has waited
     * longest. Every waiting add was woken to race for it, and whichever the scheduler ran first took it, so an add
     * could be passed over until its wait ran out while later ones went through.
     */
    @Test
    void addsWaitingForAPlaceGetOneInTheOrderTheyCame() throws Exception {
        ImageOpens opens = new ImageOpens();
        opens.waitFor(UNTIL_LET);
        int waiters = ImageOpens.MAX_WAITING;
        CountDownLatch[] let = new CountDownLatch[ImageOpens.MAX_OPENS];
        Arrays.setAll(let, i -> new CountDownLatch(1));
        List<Integer> order = java.util.Collections.synchronizedList(new ArrayList<>());
        ExecutorService requests = Executors.newCachedThreadPool();
        try {
            List<Future<AutoCloseable>> adds = holdEveryPlace(opens, requests, "blk.add first", i -> let[i], () -> {});
            List<Future<AutoCloseable>> waiting = new ArrayList<>();
            for (int i = 0; i < waiters; i++) {
                int n = i;
                waiting.add(requests.submit(() -> opens.run(
                        "blk.add vm" + n,
                        Path.of("/local/disk" + n + ".raw"),
                        wanted -> {
                            order.add(n);
                            return () -> {};
                        },
                        () -> {})));
                // the next one comes once this one waits
                Await.until(
                        Duration.ofSeconds(60),
                        () -> "add " + n + " waiting for a place: " + waitingForAPlaceCount(),
                        () -> waitingForAPlaceCount() == n + 1);
            }
            // One open returns: its place goes to an add, whose open returns at once and hands the place on, and so
            // on, while the other opens hold theirs: the waiting adds' opens start one after the other, in the order
            // their adds got the place.
            let[0].countDown();
            allOpened(waiting);
            List<Integer> arrival = new ArrayList<>();
            for (int i = 0; i < waiters; i++) {
                arrival.add(i);
            }
            assertEquals(arrival, order, "the waiting adds' opens, in the order they started");
            letAll(let);
            allOpened(adds);
        } finally {
            letAll(let);
            requests.shutdownNow();
        }
    }

    /**
     * An add still waiting for a place when its wait runs out fails, naming the images still being opened, and lets
     * go of its claim at once: its open never started.
     */
    @Test
    void anAddWhoseWaitForAPlaceRunsOutFailsNamingTheOpens() throws Exception {
        ImageOpens opens = new ImageOpens();
        opens.waitFor(UNTIL_LET);
        CountDownLatch let = new CountDownLatch(1);
        ExecutorService requests = Executors.newCachedThreadPool();
        try {
            List<Future<AutoCloseable>> adds = holdEveryPlace(opens, requests, "blk.add slow", i -> let, () -> {});
            opens.waitFor(Duration.ofMillis(100)); // the next add's wait runs out while they are under way
            AtomicInteger released = new AtomicInteger();
            RpcException e = refusedWithoutOpening(opens, released, "blk.add slow");
            assertTrue(
                    e.getMessage().contains("none returned within this add's wait")
                            && e.getMessage().contains("the id and socket are free again"),
                    e.getMessage());
            assertEquals(1, released.get(), "its claim");
            let.countDown();
            for (Future<AutoCloseable> f : adds) {
                f.get(60, TimeUnit.SECONDS);
            }
        } finally {
            let.countDown();
            requests.shutdownNow();
        }
    }

    /**
     * {@link ImageOpens#MAX_OPENS} opens whose requests all gave up on them (hung: their file systems do not answer):
     * one more add is refused at once, not made to wait with them, naming them; once they return, adds open again.
     */
    @Test
    void anAddIsRefusedAtOnceWhenEveryPlaceIsHeldByAnOpenGivenUpOn() throws Exception {
        ImageOpens opens = new ImageOpens();
        opens.waitFor(Duration.ofMillis(100)); // the requests give up first: the opens return when the test lets them
        CountDownLatch let = new CountDownLatch(1);
        AtomicInteger released = new AtomicInteger();
        try (LogCapture log = LogCapture.start("io.iovirt.daemon")) {
            for (int i = 0; i < ImageOpens.MAX_OPENS; i++) {
                RpcException e = assertThrows(
                        RpcException.class,
                        () -> opens.run(
                                "blk.add hung",
                                IMAGE,
                                wanted -> {
                                    await(let);
                                    wanted.check();
                                    return () -> {};
                                },
                                released::incrementAndGet));
                assertTrue(e.getMessage().contains("did not open within"), e.getMessage());
            }
            opens.waitFor(UNTIL_LET); // refused at once, or this request would wait until the test lets them
            RpcException e = refusedWithoutOpening(opens, released, "blk.add hung");
            assertTrue(
                    e.getMessage().contains("their requests all gave up on them")
                            && e.getMessage().contains("do not answer"),
                    e.getMessage());
            assertEquals(1, released.get(), "only the refused add's claim is released: the hung ones stay");

            let.countDown(); // the hung opens return: their claims are released, their places free
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the late opens' claims released: " + released.get(),
                    () -> released.get() == ImageOpens.MAX_OPENS + 1);
            AutoCloseable r = opens.run("nbd.add vm9", Path.of("/local/vm9.raw"), wanted -> () -> {}, () -> {});
            assertTrue(r != null, "no place once the hung opens returned");
        }
    }

    /**
     * Adds that spent most of their wait for a place (a burst on a slow but healthy file system) give up on their
     * opens soon after those started: that does not make the opens hung. One more add waits for them rather than being
     * refused at once as if their file systems did not answer, and opens once they return. Each open given up on
     * counted as hung, so the burst itself turned the next adds away with "their file systems do not answer".
     */
    @Test
    void opensGivenUpOnBecauseTheirAddsWaitedForAPlaceAreNotTakenForHung() throws Exception {
        ImageOpens opens = new ImageOpens();
        opens.waitFor(UNTIL_LET);
        CountDownLatch letFirst = new CountDownLatch(1);
        CountDownLatch letLate = new CountDownLatch(1);
        AtomicInteger released = new AtomicInteger();
        ExecutorService requests = Executors.newCachedThreadPool();
        try {
            List<Future<AutoCloseable>> first =
                    holdEveryPlace(opens, requests, "blk.add first", i -> letFirst, released::incrementAndGet);
            opens.waitFor(Duration.ofSeconds(10)); // the late adds spend most of it waiting for a place
            List<Future<AutoCloseable>> late = new ArrayList<>();
            long lateStart = System.nanoTime();
            for (int i = 0; i < ImageOpens.MAX_OPENS; i++) {
                int n = i;
                late.add(requests.submit(() -> opens.run(
                        "blk.add late" + n,
                        Path.of("/local/late" + n + ".raw"),
                        wanted -> {
                            await(letLate);
                            wanted.check();
                            return () -> {};
                        },
                        released::incrementAndGet)));
            }
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the late adds waiting for a place: " + waitingForAPlaceCount(),
                    () -> waitingForAPlaceCount() == ImageOpens.MAX_OPENS);
            // most of the late adds' wait goes by before a place frees, timed from their start: a fixed 7 s after they
            // were all seen waiting left too little of the 10 s on a loaded machine that was slow to start them
            long left = Duration.ofSeconds(6).toNanos() - (System.nanoTime() - lateStart);
            if (left > 0) {
                Thread.sleep(Duration.ofNanos(left));
            }
            letFirst.countDown();
            for (Future<AutoCloseable> f : first) {
                assertNotNull(f.get(60, TimeUnit.SECONDS));
            }
            for (Future<AutoCloseable> f : late) { // they give up on their opens, some 3 s after those started
                java.util.concurrent.ExecutionException e =
                        assertThrows(java.util.concurrent.ExecutionException.class, () -> f.get(60, TimeUnit.SECONDS));
                assertTrue(
                        e.getCause() instanceof RpcException r
                                && r.getMessage().contains("did not open within")
                                && r.getMessage().contains("waiting for one of the " + ImageOpens.MAX_OPENS)
                                && r.getMessage().contains("is slow or does not answer"),
                        String.valueOf(e.getCause()));
            }

            opens.waitFor(UNTIL_LET);
            Future<AutoCloseable> next = requests.submit(() -> opens.run(
                    "nbd.add vm17", Path.of("/local/vm17.raw"), wanted -> () -> {}, released::incrementAndGet));
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the next add waiting for a place, or answered: " + answer(next),
                    () -> next.isDone() || waitingForAPlace());
            assertFalse(
                    next.isDone(),
                    "refused at once although the opens given up on were under way for less than a wait: "
                            + answer(next));
            letLate.countDown(); // the late opens return: their places are free, their claims released
            assertNotNull(next.get(60, TimeUnit.SECONDS), "the next add opened its image");
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the late opens' claims released: " + released.get(),
                    () -> released.get() == ImageOpens.MAX_OPENS);
        } finally {
            letFirst.countDown();
            letLate.countDown();
            requests.shutdownNow();
        }
    }

    /**
     * {@link ImageOpens#MAX_OPENS} opens under way and {@link ImageOpens#MAX_WAITING} adds waiting for a place: one
     * more is refused at once, saying why, and lets go of its claim; the others go through once the opens return.
     * Every add waited, so a burst of {@link RpcServer#MAX_CLIENTS} adds (or adds on a file system that answers only
     * after most of the wait) held every control client for up to the wait, and list, remove and shutdown were
     * turned away as one client too many.
     */
    @Test
    void onlySoManyAddsWaitForAPlaceThatListAndRemoveStillGetAControlClient() throws Exception {
        assertTrue(
                ImageOpens.MAX_OPENS + ImageOpens.MAX_WAITING < RpcServer.MAX_CLIENTS,
                "adds could hold every control client");
        ImageOpens opens = new ImageOpens();
        opens.waitFor(UNTIL_LET);
        CountDownLatch let = new CountDownLatch(1);
        CountDownLatch entered = new CountDownLatch(ImageOpens.MAX_OPENS);
        ExecutorService requests = Executors.newCachedThreadPool();
        try {
            List<Future<AutoCloseable>> adds = new ArrayList<>();
            for (int i = 0; i < ImageOpens.MAX_OPENS + ImageOpens.MAX_WAITING; i++) {
                adds.add(requests.submit(() -> opens.run(
                        "blk.add many",
                        IMAGE,
                        wanted -> {
                            entered.countDown();
                            await(let);
                            return () -> {};
                        },
                        () -> {})));
            }
            assertTrue(entered.await(60, TimeUnit.SECONDS), "the opens did not start");
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "the other adds waiting for a place: " + waitingForAPlaceCount(),
                    () -> waitingForAPlaceCount() == ImageOpens.MAX_WAITING);
            AtomicInteger released = new AtomicInteger();
            Future<AutoCloseable> more = requests.submit(() -> opens.run(
                    "nbd.add one-more", Path.of("/local/more.raw"), wanted -> () -> {}, released::incrementAndGet));
            Await.until(
                    Duration.ofSeconds(60),
                    () -> "one more add answered, or waiting: " + answer(more),
                    () -> more.isDone() || waitingForAPlaceCount() > ImageOpens.MAX_WAITING);
            assertTrue(more.isDone(), "one more add waits too, holding one more control client");
            RpcException e = assertInstanceOf(RpcException.class, more.exceptionNow());
            assertEquals(RpcException.FAILED, e.code(), e.getMessage());
            assertTrue(
                    e.getMessage()
                                    .startsWith("nbd.add one-more: " + ImageOpens.MAX_OPENS + " images are being opened"
                                            + " (" + IMAGE + " (blk.add many, ")
                            && e.getMessage().contains(ImageOpens.MAX_WAITING + " more adds already wait")
                            && e.getMessage().contains("control socket's " + RpcServer.MAX_CLIENTS + " clients"),
                    e.getMessage());
            assertEquals(1, released.get(), "its claim");
            let.countDown();
            for (Future<AutoCloseable> f : adds) {
                assertNotNull(f.get(60, TimeUnit.SECONDS), "an add that waited opened its image");
            }
        } finally {
            let.countDown();
            requests.shutdownNow();
        }
    }

    /**
     * One more add ("nbd.add vm9") while every place is held by opens of {@link #IMAGE} for {@code holders}: it must
     * fail without opening its image, naming those opens; its error is returned for the caller's checks of why.
     */
    private static RpcException refusedWithoutOpening(ImageOpens opens, AtomicInteger released, String holders) {
        AtomicBoolean opened = new AtomicBoolean();
        RpcException e = assertThrows(
                RpcException.class,
                () -> opens.run(
                        "nbd.add vm9",
                        Path.of("/local/vm9.raw"),
                        wanted -> {
                            opened.set(true);
                            return () -> {};
                        },
                        released::incrementAndGet));
        assertEquals(RpcException.FAILED, e.code(), e.getMessage());
        assertTrue(
                e.getMessage()
                        .startsWith("nbd.add vm9: " + ImageOpens.MAX_OPENS + " images are still being opened (" + IMAGE
                                + " (" + holders + ", "),
                e.getMessage());
        assertFalse(opened.get(), "opened without a place");
        return e;
    }

    /**
     * Starts {@link ImageOpens#MAX_OPENS} adds of {@link #IMAGE} for {@code what}, add i's open returning once
     * {@code let(i)} is counted down, and waits until every one has started: they hold every place. {@code release}
     * is each add's claim.
     */
    private static List<Future<AutoCloseable>> holdEveryPlace(
            ImageOpens opens,
            ExecutorService requests,
            String what,
            java.util.function.IntFunction<CountDownLatch> let,
            Runnable release)
            throws InterruptedException {
        CountDownLatch entered = new CountDownLatch(ImageOpens.MAX_OPENS);
        List<Future<AutoCloseable>> adds = new ArrayList<>();
        for (int i = 0; i < ImageOpens.MAX_OPENS; i++) {
            CountDownLatch l = let.apply(i);
            adds.add(requests.submit(() -> opens.run(
                    what,
                    IMAGE,
                    wanted -> {
                        entered.countDown();
                        await(l);
                        return () -> {};
                    },
                    release)));
        }
        assertTrue(entered.await(60, TimeUnit.SECONDS), "the opens holding every place did not start");
        return adds;
    }

    /** Lets every open held by one of {@code let} return. */
    private static void letAll(CountDownLatch[] let) {
        for (CountDownLatch l : let) {
            l.countDown();
        }
    }

    /** Each of {@code adds} returns what it opened. */
    private static void allOpened(List<Future<AutoCloseable>> adds) throws Exception {
        for (Future<AutoCloseable> f : adds) {
            assertNotNull(f.get(60, TimeUnit.SECONDS), "an add did not open its image");
        }
    }

    /** What an open blocked in a file system until the test lets it does. */
    private static void await(CountDownLatch let) throws java.io.InterruptedIOException {
        try {
            let.await();
        } catch (InterruptedException e) {
            throw new java.io.InterruptedIOException("the test ended");
        }
    }

    /** Whether a thread waits for a place among the opens ({@link ImageOpens}'s place). */
    private static boolean waitingForAPlace() {
        return waitingForAPlaceCount() > 0;
    }

    /** How many threads wait for a place among the opens. */
    private static long waitingForAPlaceCount() {
        return Thread.getAllStackTraces().values().stream()
                .filter(st -> Arrays.stream(st)
                        .anyMatch(f -> f.getClassName().equals(ImageOpens.class.getName())
                                && f.getMethodName().equals("place")))
                .count();
    }

    private static Object answer(Future<?> f) {
        return switch (f.state()) {
            case SUCCESS -> f.resultNow();
            case FAILED -> f.exceptionNow();
            default -> "none yet";
        };
    }
}
