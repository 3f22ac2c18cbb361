// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;

import io.iovirt.testing.Require;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.ToIntFunction;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Names to ids through libc's user and group database (getpwnam, getgrnam), as socket access control looks them up. */
@Timeout(120)
class UserDatabaseTest {
    /** The first two names of a colon-separated database file (/etc/passwd, /etc/group) with different ids. */
    private static Map<String, Integer> twoEntries(Path file) throws Exception {
        Map<String, Integer> out = new LinkedHashMap<>();
        for (String line : Files.readAllLines(file)) {
            String[] f = line.split(":");
            if (f.length >= 3 && !f[0].isEmpty() && !out.containsValue(Integer.parseInt(f[2]))) {
                out.put(f[0], Integer.parseInt(f[2]));
            }
            if (out.size() == 2) {
                break;
            }
        }
        Require.that(out.size() == 2, "two entries with different ids in " + file);
        return out;
    }

    /**
     * Two threads look up two different names at once, over and over. getgrnam and getpwnam hand back libc's one
     * static struct, which the other thread's call overwrites: a lookup read the other name's id (80 to 110 of 200,000
     * before the lookups were serialized) — a socket set up for one group then went to another.
     */
    private static void eachThreadGetsItsOwnNamesId(Map<String, Integer> names, ToIntFunction<MemorySegment> lookup)
            throws Exception {
        AtomicInteger wrong = new AtomicInteger();
        AtomicReference<String> example = new AtomicReference<>();
        AtomicReference<Throwable> failed = new AtomicReference<>();
        List<Thread> threads = new ArrayList<>();
        for (Map.Entry<String, Integer> e : names.entrySet()) {
            threads.add(Thread.ofPlatform().start(() -> {
                try (Arena a = Arena.ofConfined()) {
                    MemorySegment name = a.allocateFrom(e.getKey());
                    for (int i = 0; i < 100_000; i++) {
                        int id = lookup.applyAsInt(name);
                        if (id != e.getValue()) {
                            wrong.incrementAndGet();
                            example.set(e.getKey() + " -> " + id);
                        }
                    }
                } catch (Throwable t) { // a thread ended by a failed lookup would count no wrong id
                    failed.set(t);
                }
            }));
        }
        for (Thread t : threads) {
            t.join();
        }
        if (failed.get() != null) {
            throw new AssertionError("a lookup failed", failed.get());
        }
        assertEquals(0, wrong.get(), "lookups that returned another name's id, e.g. " + example.get());
    }

    @Test
    void concurrentGroupLookupsEachGetTheirOwnGroupsId() throws Exception {
        eachThreadGetsItsOwnNamesId(twoEntries(Path.of("/etc/group")), Syscalls::groupId);
    }

    @Test
    void concurrentUserLookupsEachGetTheirOwnUsersId() throws Exception {
        eachThreadGetsItsOwnNamesId(twoEntries(Path.of("/etc/passwd")), Syscalls::userId);
    }
}
