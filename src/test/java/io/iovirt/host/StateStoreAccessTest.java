// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Require;
import io.iovirt.vm.ChildProcess;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.time.Duration;
import java.util.List;
import java.util.regex.Pattern;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * The state directory's access rules: 0700 and 0600 whatever the umask, and a directory or table others could
 * have rewritten is refused with the remedy.
 */
class StateStoreAccessTest {
    @TempDir
    Path tmp;

    private static String mode(Path p) throws Exception {
        return PosixFilePermissions.toString(Files.getPosixFilePermissions(p, LinkOption.NOFOLLOW_LINKS));
    }

    private static List<String[]> rows() {
        return List.<String[]>of(new String[] {"0000:03:10.0", "igbvf"});
    }

    @Test
    void createdOwnerOnlyUnderAnOpenUmask() throws Exception {
        // The umask is per process and Java cannot set it: run the writer in a child under umask 000.
        Path dir = tmp.resolve("a/state");
        String java = ProcessHandle.current().info().command().orElseThrow();
        List<String> cmd = List.of(
                "sh",
                "-c",
                "umask 000; exec \"$0\" -cp \"$1\" " + StateWriterMain.class.getName() + " \"$2\"",
                java,
                System.getProperty("java.class.path"),
                dir.toString());
        try (ChildProcess child = ChildProcess.builder(cmd)
                .name("state writer")
                .log(tmp.resolve("writer.log"))
                .start()) {
            assertTrue(child.waitFor(Duration.ofSeconds(120)), "the writer did not end: " + child.logTail(20));
            assertEquals(0, child.exitValue(), child.logTail(20));
        }
        assertEquals("rwx------", mode(dir));
        try (Stream<Path> files = Files.list(dir)) {
            for (Path f : files.toList()) {
                assertEquals("rw-------", mode(f), f.toString());
            }
        }
        assertEquals("rw-------", mode(dir.resolve("t")));
        assertEquals("rw-------", mode(dir.resolve("lock")));
    }

    /**
     * The first table makes the state directory (and missing parents): each new directory is made 0700 by mkdir
     * itself and fsynced into its parent — fsyncing the tables and the state directory does not make the state
     * directory's own name durable, and a crash could take it with every table in it. Seen in the system calls of a
     * real writer process (strace).
     */
    @Test
    void aNewDirectoryIsMadePrivateAndDurableInItsParent() throws Exception {
        Path strace = Require.program("strace", "apt-get install strace, or scripts/install-deps.sh");
        Path dir = tmp.resolve("a/state");
        Path trace = tmp.resolve("trace");
        List<String> cmd = List.of(
                strace.toString(),
                "-f",
                "-y",
                "-e",
                "trace=mkdir,mkdirat,fsync,fdatasync",
                "-o",
                trace.toString(),
                ProcessHandle.current().info().command().orElseThrow(),
                "-cp",
                System.getProperty("java.class.path"),
                StateWriterMain.class.getName(),
                dir.toString());
        try (ChildProcess child = ChildProcess.builder(cmd)
                .name("traced state writer")
                .log(tmp.resolve("writer.log"))
                .start()) {
            assertTrue(child.waitFor(Duration.ofSeconds(120)), "the writer did not end: " + child.logTail(20));
            assertEquals(0, child.exitValue(), child.logTail(20));
        }
        List<String> calls = Files.readAllLines(trace).stream()
                .map(l -> l.replaceFirst("^\\d+ +", ""))
                .toList();
        int made = calls.indexOf("mkdir(\"" + dir + "\", 0700) = 0");
        assertTrue(made >= 0, "the state directory was not made 0700 by mkdir: " + calls);
        for (Path p : List.of(dir.getParent(), tmp)) {
            Pattern fsync = Pattern.compile("fsync\\(\\d+<" + Pattern.quote(p.toString()) + ">\\) = 0");
            assertTrue(
                    calls.subList(made, calls.size()).stream()
                            .anyMatch(c -> fsync.matcher(c).matches()),
                    p + " was not fsynced after the state directory was made: " + calls);
        }
    }

    @Test
    void aReadableDirectoryOfOursIsNarrowed() throws Exception {
        Path dir = Files.createDirectory(tmp.resolve("state"));
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxr-xr-x"));
        StateStore s = new StateStore(dir);
        s.locked(() -> {
            s.write("t", rows());
            return null;
        });
        assertEquals("rwx------", mode(dir));
        assertEquals("igbvf", s.read("t").get(0)[1]);
    }

    @Test
    void aDirectoryOrTableOthersCanWriteIsRefused() throws Exception {
        Path dir = Files.createDirectory(tmp.resolve("state"));
        StateStore s = new StateStore(dir);
        s.locked(() -> {
            s.write("t", rows());
            return null;
        });
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwxrwxrwx"));
        HostConfigException d = assertThrows(HostConfigException.class, () -> s.read("t"));
        assertTrue(
                d.getMessage().contains("the state directory " + dir + " is writable by other users (mode rwxrwxrwx)"),
                d.getMessage());
        assertTrue(d.remedy().contains("chmod 0700 " + dir), d.remedy());
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwx------"));

        Files.setPosixFilePermissions(dir.resolve("t"), PosixFilePermissions.fromString("rw-rw-r--"));
        HostConfigException f = assertThrows(HostConfigException.class, () -> s.read("t"));
        assertTrue(
                f.getMessage().contains(dir.resolve("t") + " is writable by other users (mode rw-rw-r--)"),
                f.getMessage());
        assertTrue(f.remedy().contains("chmod 0600"), f.remedy());
        Files.setPosixFilePermissions(dir.resolve("t"), PosixFilePermissions.fromString("rw-------"));

        Path elsewhere = Files.writeString(tmp.resolve("elsewhere"), "iovirt-t 1\nend 0\n");
        Files.delete(dir.resolve("t"));
        Files.createSymbolicLink(dir.resolve("t"), elsewhere);
        HostConfigException l = assertThrows(HostConfigException.class, () -> s.read("t"));
        assertTrue(l.getMessage().contains("is not a regular file"), l.getMessage());
    }

    @Test
    void aDirectoryOfAnotherUidIsRefused() throws Exception {
        Require.that(
                io.iovirt.linux.SocketAccess.ownUid() == 0,
                "this test changes a directory's owner: run the suite as root");
        Path dir = Files.createDirectory(tmp.resolve("state"));
        Files.setPosixFilePermissions(dir, PosixFilePermissions.fromString("rwx------"));
        Files.setAttribute(dir, "unix:uid", 65534);
        HostConfigException e = assertThrows(HostConfigException.class, () -> new StateStore(dir).read("t"));
        assertTrue(e.getMessage().contains("belongs to uid 65534, not to us (uid 0)"), e.getMessage());
        assertTrue(e.remedy().contains("run iovirt as uid 65534"), e.remedy());
    }

    /**
     * An upgraded host keeps its host tables: those the root host commands kept in the services' directory (the
     * legacy place) move into their own directory on first use, and the assignments read there are the old ones.
     */
    @Test
    void theTablesAnOlderVersionLeftAreMovedIntoTheDirectoryOnFirstUse() throws Exception {
        assertEquals(
                List.of(io.iovirt.host.assign.AssignmentRegistry.TABLE, io.iovirt.host.binding.DriverBinding.TABLE),
                StateStore.HOST_TABLES);
        Path legacy = tmp.resolve("legacy");
        StateStore old = new StateStore(legacy, null);
        old.locked(() -> {
            old.write("assignments", List.<String[]>of(new String[] {"0000:03:10.0", "vm1", "2026-12-01T00:00:00Z"}));
            return null;
        });
        Path dir = tmp.resolve("host");
        List<String[]> rows = new StateStore(dir, legacy).read("assignments");
        assertEquals(1, rows.size());
        assertEquals("vm1", rows.get(0)[1]);
        assertTrue(Files.exists(dir.resolve("assignments")));
        assertTrue(!Files.exists(legacy.resolve("assignments")), "moved, not copied");
        assertEquals("rw-------", mode(dir.resolve("assignments")));
    }

    /**
     * A legacy table someone else owns (systemd re-owns the services' directory to their user at each start) is not
     * taken as ours: the command stops and says what to check and do; once that is done, it is moved.
     */
    @Test
    void aLegacyTableNotOursAloneStopsTheCommandWithTheRemedy() throws Exception {
        Require.that(io.iovirt.linux.SocketAccess.ownUid() == 0, "root, to give a file another owner");
        Path legacy = tmp.resolve("legacy2");
        StateStore old = new StateStore(legacy, null);
        old.locked(() -> {
            old.write("drivers", rows());
            return null;
        });
        Path table = legacy.resolve("drivers");
        Files.setAttribute(table, "unix:uid", 64123);
        Path dir = tmp.resolve("host2");
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> new StateStore(dir, legacy).read("drivers"));
        assertTrue(
                e.getMessage().contains("belongs to uid 64123")
                        && e.getMessage().contains("mv "),
                e.getMessage());
        assertTrue(Files.exists(table), "left where it was");
        Files.setAttribute(table, "unix:uid", 0);
        assertEquals(1, new StateStore(dir, legacy).read("drivers").size(), "moved once it is ours");
    }

    /**
     * A table both places have with other rows is left to the administrator: the command stops and says which to
     * keep. With the same rows (a crash between the copy and the removal), the old file is removed.
     */
    @Test
    void aTableInBothPlacesStopsTheCommandUnlessItHasTheSameRows() throws Exception {
        Path legacy = tmp.resolve("legacy3");
        Path dir = tmp.resolve("host3");
        writeTable(legacy, "drivers", List.<String[]>of(new String[] {"0000:03:10.1", "ixgbevf"}));
        writeTable(dir, "drivers", rows());
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> new StateStore(dir, legacy).read("drivers"));
        assertTrue(e.getMessage().contains("in both"), e.getMessage());
        assertTrue(Files.exists(legacy.resolve("drivers")) && Files.exists(dir.resolve("drivers")), "both left");
        writeTable(legacy, "drivers", rows());
        assertEquals(1, new StateStore(dir, legacy).read("drivers").size());
        assertTrue(!Files.exists(legacy.resolve("drivers")), "the copy's leftover removed");
    }

    /** A file of that name which is no table of ours is not taken: it stays where it is, and the command stops. */
    @Test
    void aLegacyFileThatIsNoTableStaysWhereItIs() throws Exception {
        Path legacy = tmp.resolve("legacy4");
        Files.createDirectories(legacy);
        Files.writeString(legacy.resolve("assignments"), "someone's notes\n");
        Path dir = tmp.resolve("host4");
        HostConfigException e =
                assertThrows(HostConfigException.class, () -> new StateStore(dir, legacy).read("assignments"));
        assertTrue(e.getMessage().contains("cannot bring"), e.getMessage());
        assertEquals("someone's notes\n", Files.readString(legacy.resolve("assignments")));
        assertTrue(!Files.exists(dir.resolve("assignments")));
    }

    private static void writeTable(Path dir, String name, List<String[]> rows) {
        StateStore s = new StateStore(dir, null);
        s.locked(() -> {
            s.write(name, rows);
            return null;
        });
    }
}
