// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import static io.iovirt.storage.qcow2.QemuTools.ok;
import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.storage.qcow2.QemuTools;
import io.iovirt.testing.Require;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Random;
import java.util.stream.Stream;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * A tenant's qcow2 image (made by qemu-img, the real peer) naming a backing file outside the operator's
 * {@link BackingPolicy} is refused, whatever way it names it (absolute, a symbolic link, {@code ..}, a level further
 * down the chain, a device), before the backing file is locked; chains inside the policy open and read as before.
 * Before, iovirt opened whatever the header named, as QEMU does.
 */
@org.junit.jupiter.api.Tag("peer") // qemu-img, qemu-io: Failsafe
class BackingPolicyTest {
    private static final int MIB = 1 << 20;

    @TempDir
    Path dir;

    private Path tenant;
    private Path bases;
    private Path secret;
    private byte[] secretData;

    @BeforeEach
    void layout() throws IOException {
        Require.program("qemu-img", "apt-get install qemu-utils");
        tenant = Files.createDirectories(dir.resolve("tenant1"));
        bases = Files.createDirectories(dir.resolve("bases"));
        Path outside = Files.createDirectories(dir.resolve("outside"));
        secret = outside.resolve("secret.raw");
        secretData = new byte[MIB];
        new Random(7).nextBytes(secretData);
        Files.write(secret, secretData);
    }

    private BackingPolicy basesOnly() throws IOException {
        return BackingPolicy.of(List.of(bases), false);
    }

    /** {@code qemu-img create -f qcow2 -u -b BACKING -F FMT OVERLAY 1M} (-u: the backing file is not opened). */
    private static Path overlay(Path overlay, String backing, String fmt) throws Exception {
        ok("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, overlay.toString(), "1M");
        return overlay;
    }

    private static IOException refused(Path image, BackingPolicy policy) {
        return assertThrows(IOException.class, () -> {
            try (DiskImage d = Images.open(image, null, true, false, policy)) {
                // opened: the assertion fails
            }
        });
    }

    static byte[] read(DiskImage img, long off, int len) throws IOException {
        try (Arena a = Arena.ofConfined();
                ImageIo io = img.newContext(8, 0)) {
            MemorySegment b = a.allocate(len);
            io.add(b);
            io.read(off);
            return b.toArray(ValueLayout.JAVA_BYTE);
        }
    }

    @Test
    void aBackingFileOutsideTheAllowedDirectoriesIsRefusedBeforeItIsLocked() throws Exception {
        Path top = overlay(tenant.resolve("disk.qcow2"), secret.toString(), "raw");
        try (DiskImage d = Images.open(top, null, true, false)) { // QEMU's behaviour, still the default
            assertArrayEquals(secretData, read(d, 0, MIB));
        }
        IOException e = refused(top, basesOnly());
        String m = e.getMessage();
        assertTrue(
                m.contains("backing file " + secret + " of " + top + " is outside the allowed backing directories "
                                + bases.toRealPath())
                        && m.contains("refuse the image (converting it would copy " + secret + "'s data")
                        && m.contains("if the image and " + secret + " are yours, allow its directory with"
                                + " --backing-dir (one only you can write"),
                m);
        assertFalse(m.contains("qemu-img convert"), m); // a hostile image's remedy is not to copy the file it names
        // refused before the lock: a writer holding the file (another tenant's VM) is not even looked at; without a
        // policy the shared lock is tried, and conflicts with it
        Process writer = QemuTools.writerHolding(secret);
        try {
            IOException held = refused(top, BackingPolicy.UNRESTRICTED);
            assertTrue(held.getMessage().contains("in use"), held.getMessage());
            IOException policy = refused(top, basesOnly());
            assertTrue(policy.getMessage().contains("outside the allowed backing directories"), policy.getMessage());
        } finally {
            writer.destroyForcibly().waitFor();
        }
    }

    /** The name a tenant's header chose reaches logs: no newline or ESC of it does. */
    @Test
    void aBackingFileNameIsPrintedWithoutItsControlCharacters() throws Exception {
        Path odd = Files.write(secret.resolveSibling("x\nFORGED \u001b[31m.raw"), new byte[4096]);
        Path top = overlay(tenant.resolve("disk.qcow2"), odd.toString(), "raw");
        String m = refused(top, basesOnly()).getMessage();
        assertTrue(m.contains("x\\nFORGED \\x1b[31m.raw") && m.contains("outside the allowed"), m);
        assertFalse(m.contains("\n") || m.contains("\u001b"), m);
    }

    /**
     * An overlay naming a file outside without its format is refused by the policy first: the format's remedy (a
     * rebase naming the tenant's choice) is not offered for a file the image must not name at all.
     */
    @Test
    void thePolicyDecidesBeforeTheMissingFormatsRemedy() throws Exception {
        Path top = overlay(tenant.resolve("disk.qcow2"), secret.toString(), "raw");
        byte[] header = Files.readAllBytes(top);
        int ext = -1;
        for (int i = 104; i < 4096 && ext < 0; i += 1) {
            if ((header[i] & 0xff) == 0xe2
                    && header[i + 1] == 0x79
                    && header[i + 2] == 0x2a
                    && (header[i + 3] & 0xff) == 0xca) {
                ext = i;
            }
        }
        assertTrue(ext > 0, "the backing format header extension");
        try (java.io.RandomAccessFile f = new java.io.RandomAccessFile(top.toFile(), "rw")) {
            f.seek(ext);
            f.writeInt(0x10ad0bad); // an extension QEMU and iovirt ignore: no backing format
        }
        String m = refused(top, basesOnly()).getMessage();
        assertTrue(m.contains("outside the allowed backing directories"), m);
        assertFalse(m.contains("rebase") || m.contains("without its format"), m);
    }

    /** Without a policy too, the name a header chose reaches the messages of every refusal escaped. */
    @Test
    void aBackingFileNameIsPrintedEscapedByEveryRefusal() throws Exception {
        for (String name : List.of("/nonexistent/x\nFORGED.raw", "json:{\"x\nFORGED\": 1}")) {
            Path top = overlay(tenant.resolve("n" + name.length() + ".qcow2"), name, "raw");
            String m = refused(top, BackingPolicy.UNRESTRICTED).getMessage();
            assertTrue(m.contains("x\\nFORGED"), m);
            assertFalse(m.contains("\n"), m);
        }
    }

    /**
     * A block device allowed as itself is allowed while its path names that device: a node of that name made for
     * another device since (device-mapper and loop numbers are reused) is refused, naming both numbers.
     */
    @Test
    void aDeviceAllowedAsItselfIsMatchedByItsNumberNotOnlyItsPath() throws Exception {
        Path node = dir.resolve("dm-x");
        Require.that(mknod(node, 7, 200), "mknod of a block device node (CAP_MKNOD)");
        BackingPolicy policy = BackingPolicy.of(List.of(node), false);
        Path top = tenant.resolve("disk.qcow2");
        policy.checkPath(top, node); // the device named: allowed
        Files.delete(node);
        assertTrue(mknod(node, 7, 201)); // another device now has that name
        IOException e = assertThrows(IOException.class, () -> policy.checkPath(top, node));
        assertTrue(
                e.getMessage()
                        .contains("is no longer the block device allowed as " + node.toRealPath()
                                + " (device 7:200 when allowed, device 7:201 now"),
                e.getMessage());
    }

    /**
     * A device allowed by the operator's name for it (/dev/mapper/vg-base, a link to the node named after its number)
     * is refused once that name is gone, even though the node, and its number, now belong to another volume a tenant
     * names (/dev/mapper/vg-tenant): device-mapper reuses numbers, so the number alone cannot tell the volumes apart.
     */
    @Test
    void aDeviceAllowedByItsNameIsRefusedOnceTheNameIsGoneThoughItsNumberWasReused() throws Exception {
        Path node = dir.resolve("dm-x");
        Require.that(mknod(node, 7, 200), "mknod of a block device node (CAP_MKNOD)");
        Path mapper = Files.createDirectories(dir.resolve("mapper"));
        Path base = Files.createSymbolicLink(mapper.resolve("vg-base"), node);
        BackingPolicy policy = BackingPolicy.of(List.of(base), false);
        Path top = tenant.resolve("disk.qcow2");
        policy.checkPath(top, base); // allowed by its name
        Files.delete(base); // the volume is removed; another one gets its number, and so its node
        Path other = Files.createSymbolicLink(mapper.resolve("vg-tenant"), node);
        IOException e = assertThrows(IOException.class, () -> policy.checkPath(top, other));
        assertTrue(e.getMessage().contains("that name no longer exists"), e.getMessage());
    }

    /**
     * With no directory list, a refused block device's remedy is to allow devices, not to name it in a list (which
     * would then refuse every other backing file).
     */
    @Test
    void aDeviceRefusedWithoutADirectoryListIsAllowedByAllowingDevices() throws Exception {
        Path node = dir.resolve("disk-dev");
        Require.that(mknod(node, 7, 200), "mknod of a block device node (CAP_MKNOD)");
        Path top = tenant.resolve("disk.qcow2");
        String cli = assertThrows(
                        IOException.class, () -> BackingPolicy.of(null, false).checkPath(top, node))
                .getMessage();
        assertTrue(
                cli.contains("is a block device") && cli.contains("allow backing devices with --backing-devices"), cli);
        assertFalse(cli.contains("--backing-dir"), cli);
        String config = assertThrows(
                        IOException.class,
                        () -> BackingPolicy.of(null, false, true).checkPath(top, node))
                .getMessage();
        assertTrue(config.contains("\"backing\": {\"devices\": true}"), config);
        assertFalse(config.contains("dirs"), config);
        String listed = assertThrows(
                        IOException.class,
                        () -> BackingPolicy.of(List.of(bases), false).checkPath(top, node))
                .getMessage();
        // a list: the device itself, by a name that says which volume, never the node named after its number
        assertTrue(
                listed.contains("by a name that says which volume (under /dev/mapper or /dev/disk/by-id, not "
                        + node.toRealPath() + ", a node named after a number that is reused) in --backing-dir"),
                listed);
        Path link = Files.createSymbolicLink(dir.resolve("vg-disk"), node);
        String byLink = assertThrows(
                        IOException.class,
                        () -> BackingPolicy.of(List.of(bases), false).checkPath(top, link))
                .getMessage();
        assertTrue(byLink.contains("--backing-dir " + link + " (never all of /dev)"), byLink);
    }

    private static boolean mknod(Path node, int major, int minor) throws Exception {
        Process p = new ProcessBuilder("mknod", node.toString(), "b", "" + major, "" + minor)
                .redirectErrorStream(true)
                .start();
        p.getInputStream().readAllBytes();
        return p.waitFor() == 0;
    }

    @Test
    void aSymbolicLinkInsideAnAllowedDirectoryPointingOutsideIsRefused() throws Exception {
        Path link = Files.createSymbolicLink(bases.resolve("base.raw"), secret);
        Path top = overlay(tenant.resolve("disk.qcow2"), link.toString(), "raw");
        String m = refused(top, basesOnly()).getMessage();
        assertTrue(m.contains(link + " (" + secret.toRealPath() + ")") && m.contains("outside"), m);
    }

    /**
     * A directory inside an allowed one that every user can write (a drop directory, as /tmp) would let
     * anyone put a file there for an image to name: refused, and so is an allowed directory made so after the policy.
     */
    @Test
    void aBackingFileInADirectoryEveryUserCanWriteIsRefused() throws Exception {
        Path drop = Files.createDirectories(bases.resolve("team/drop"));
        Path base = Files.write(drop.resolve("base.raw"), new byte[MIB]);
        Path top = overlay(tenant.resolve("disk.qcow2"), base.toString(), "raw");
        BackingPolicy policy = basesOnly();
        BackingPolicy nested = BackingPolicy.of(List.of(bases, bases.resolve("team")), false);
        try (DiskImage d = Images.open(top, null, true, false, nested)) {
            assertArrayEquals(new byte[4096], read(d, 0, 4096)); // allowed while only its owner can write there
        }
        Files.setPosixFilePermissions(drop, java.nio.file.attribute.PosixFilePermissions.fromString("rwxrwxrwx"));
        String m = refused(top, policy).getMessage();
        assertTrue(
                m.contains("is in " + drop.toRealPath() + ", a directory under the allowed " + bases.toRealPath()
                                + " that every user can write")
                        && m.contains("chmod o-w " + drop.toRealPath()),
                m);
        Files.setPosixFilePermissions(drop, java.nio.file.attribute.PosixFilePermissions.fromString("rwxr-xr-x"));
        Files.setPosixFilePermissions(bases, java.nio.file.attribute.PosixFilePermissions.fromString("rwxrwxrwx"));
        m = refused(top, policy).getMessage(); // the allowed directory itself, made so after the policy was made
        assertTrue(m.contains("is in " + bases.toRealPath() + ", an allowed backing directory that every user"), m);
        // allowed directories nested: the outer one is looked at too (anyone could replace the inner one)
        m = refused(top, nested).getMessage();
        assertTrue(m.contains("is in " + bases.toRealPath() + ", an allowed backing directory that every user"), m);
    }

    @Test
    void dotDotEscapesAreRefused() throws Exception {
        // lexically outside
        Path top = overlay(tenant.resolve("a.qcow2"), bases + "/../outside/secret.raw", "raw");
        assertTrue(refused(top, basesOnly()).getMessage().contains("outside the allowed"));
        // lexically inside (bases/secret.raw), but the kernel resolves '..' after the link: outside/secret.raw
        Path inner = Files.createDirectories(secret.getParent().resolve("inner"));
        Files.createSymbolicLink(bases.resolve("lnk"), inner);
        Files.write(bases.resolve("secret.raw"), new byte[MIB]); // a decoy the lexical reading would take
        Path sneaky = overlay(tenant.resolve("b.qcow2"), bases + "/lnk/../secret.raw", "raw");
        String m = refused(sneaky, basesOnly()).getMessage();
        assertTrue(m.contains(secret.toRealPath().toString()) && m.contains("outside the allowed"), m);
        // relative, from the overlay's directory
        Path relative = overlay(tenant.resolve("c.qcow2"), "../outside/secret.raw", "raw");
        assertTrue(refused(relative, basesOnly()).getMessage().contains("outside the allowed"));
    }

    /**
     * The second check decides on what was opened, not on the path: a path that was inside when looked at and
     * swapped for a link to a file outside before the open is refused on the descriptor's real path.
     */
    @Test
    void theOpenedDescriptorIsCheckedNotThePath() throws Exception {
        Path named = bases.resolve("base.raw");
        Files.write(named, new byte[MIB]);
        Path top = tenant.resolve("disk.qcow2");
        basesOnly().checkPath(top, named); // inside when looked at
        Files.delete(named);
        Files.createSymbolicLink(named, secret); // swapped before the open
        try (var fd = FileIo.open(named, FileIo.O_RDONLY)) {
            IOException e = assertThrows(IOException.class, () -> basesOnly().checkOpened(top, named, fd));
            assertTrue(
                    e.getMessage().contains(named + " (" + secret.toRealPath() + ") of " + top + " is outside"),
                    e.getMessage());
        }
        try (var fd = FileIo.open(Path.of("/dev/null"), FileIo.O_RDONLY)) {
            IOException e = assertThrows(
                    IOException.class, () -> BackingPolicy.of(null, false).checkOpened(top, named, fd));
            assertTrue(e.getMessage().contains("is a character device"), e.getMessage());
        }
    }

    /**
     * The kernel's name for the descriptor is only a name: the file opened must still be at that path. One deleted
     * after the open (its name "PATH (deleted)"), with a decoy of exactly that name put in an allowed directory, or
     * a bind mount of another mount namespace posing as an allowed path, is refused.
     */
    @Test
    void theKernelsNameForTheDescriptorMustStillNameTheFileOpened() throws Exception {
        Path top = tenant.resolve("disk.qcow2");
        Path named = bases.resolve("base.raw");
        Files.write(named, new byte[4096]);
        try (var fd = FileIo.open(named, FileIo.O_RDONLY)) {
            basesOnly().checkOpened(top, named, fd); // still there: fine
            Files.delete(named);
            IOException e = assertThrows(IOException.class, () -> basesOnly().checkOpened(top, named, fd));
            assertTrue(e.getMessage().contains("changed while it was opened"), e.getMessage());
            Files.write(bases.resolve("base.raw (deleted)"), new byte[4096]); // a decoy with the kernel's name
            e = assertThrows(IOException.class, () -> basesOnly().checkOpened(top, named, fd));
            assertTrue(e.getMessage().contains("changed while it was opened"), e.getMessage());
        }
    }

    /**
     * The backing file's shared lock is taken through the descriptor it was opened and checked as, not by a second
     * open of its path (which a swap could point at another tenant's disk, or make fail and leave the file served
     * unlocked): while the image is open, a writer of the backing file is refused, of a decoy beside it is not.
     */
    @Test
    void theBackingFilesLockIsOnTheFileOpened() throws Exception {
        Require.program("qemu-io", "apt-get install qemu-utils");
        Path base = bases.resolve("base.raw");
        Files.write(base, new byte[MIB]);
        Path decoy = bases.resolve("decoy.raw");
        Files.write(decoy, new byte[MIB]);
        Path top = overlay(tenant.resolve("disk.qcow2"), base.toString(), "raw");
        try (DiskImage d = Images.open(top, null, true, false, basesOnly())) {
            QemuTools.Result w = QemuTools.qemuIo(base.toString(), "raw", "write 0 512");
            assertTrue(w.exit() != 0 && w.output().contains("lock"), w.output());
            QemuTools.Result ok = QemuTools.qemuIo(decoy.toString(), "raw", "write 0 512");
            assertTrue(ok.exit() == 0, ok.output());
            assertArrayEquals(new byte[4096], read(d, 0, 4096));
            // one open file description: every descriptor this process has on the base (the one it is read through
            // too) lists the lock; a lock taken by an open of its own would be listed under that descriptor alone
            int onBase = 0;
            try (Stream<Path> fds = Files.list(Path.of("/proc/self/fd"))) {
                for (Path fd : fds.toList()) {
                    Path target;
                    try {
                        target = Files.readSymbolicLink(fd);
                    } catch (IOException gone) {
                        continue; // the listing's own descriptor, closed by now
                    }
                    if (target.equals(base.toRealPath())) {
                        onBase++;
                        String info = Files.readString(
                                Path.of("/proc/self/fdinfo", fd.getFileName().toString()));
                        assertTrue(info.contains("lock:"), fd + " on the base holds no lock: " + info);
                    }
                }
            }
            assertTrue(onBase >= 2, "the base read through and locked through a dup: " + onBase);
        }
    }

    @Test
    void aChainWhoseBottomIsOutsideIsRefusedThoughItsMiddleIsAllowed() throws Exception {
        Path mid = overlay(bases.resolve("mid.qcow2"), secret.toString(), "raw");
        Path top = overlay(tenant.resolve("disk.qcow2"), mid.toString(), "qcow2");
        String m = refused(top, basesOnly()).getMessage();
        assertTrue(m.contains("backing file " + secret + " of " + mid + " is outside"), m);
    }

    @Test
    void devicesAreRefusedUnlessAllowedAndAnAllowedDeviceIsNamedItself() throws Exception {
        // neither a regular file nor a block device: refused whatever the policy, with no hint to allow devices
        Path top = overlay(tenant.resolve("null.qcow2"), "/dev/null", "raw");
        for (BackingPolicy p : List.of(
                BackingPolicy.of(List.of(bases), false),
                BackingPolicy.of(null, false),
                BackingPolicy.of(List.of(bases), true))) {
            String m = refused(top, p).getMessage();
            assertTrue(
                    m.contains("/dev/null of " + top + " is a character device, not a regular file or a block device"),
                    p + ": " + m);
            assertFalse(m.contains("--backing-devices") || m.contains("not allowed"), p + ": " + m);
        }
        Path dirAsBacking = overlay(tenant.resolve("dir.qcow2"), bases.toString(), "raw");
        String m = refused(dirAsBacking, BackingPolicy.of(List.of(bases.getParent()), true))
                .getMessage();
        assertTrue(m.contains("is a directory, not a regular file or a block device"), m);
        // block devices (only looked at by path: nothing opens them)
        List<Path> blocks;
        try (Stream<Path> s = Files.list(Path.of("/dev"))) {
            blocks = s.filter(p -> {
                        try {
                            return !Files.isSymbolicLink(p) && FileIo.stat(p).isBlockDevice();
                        } catch (LinuxException e) {
                            return false;
                        }
                    })
                    .limit(2)
                    .toList();
        }
        Require.that(!blocks.isEmpty(), "a block device in /dev");
        Path block = blocks.get(0).toRealPath();
        IOException e = assertThrows(IOException.class, () -> basesOnly().checkPath(top, block));
        assertTrue(
                e.getMessage()
                        .contains(
                                block + " of " + top + " is a block device, and backing devices are not" + " allowed"),
                e.getMessage());
        assertTrue(
                e.getMessage()
                        .contains("allow the device itself by a name that says which volume (under /dev/mapper"
                                + " or /dev/disk/by-id, not " + block
                                + ", a node named after a number that is reused) in"
                                + " --backing-dir"),
                e.getMessage());
        // a device named itself is allowed, without all of /dev: not another device, nor a file beside it
        BackingPolicy thatDevice = BackingPolicy.of(List.of(block), false);
        thatDevice.checkPath(top, block);
        if (blocks.size() > 1) {
            Path other = blocks.get(1).toRealPath();
            e = assertThrows(IOException.class, () -> thatDevice.checkPath(top, other));
            assertTrue(
                    e.getMessage().contains("is a block device, and backing devices are not allowed"), e.getMessage());
            e = assertThrows(
                    IOException.class,
                    () -> BackingPolicy.of(List.of(block), true).checkPath(top, other));
            assertTrue(e.getMessage().contains("outside the allowed backing directories " + block), e.getMessage());
        }
        // the daemon's messages name its configuration key, not the serve commands' option
        e = assertThrows(
                IOException.class,
                () -> BackingPolicy.of(List.of(bases), false, true).checkPath(top, block));
        assertTrue(e.getMessage().contains("the configuration file's backing.dirs"), e.getMessage());
        assertFalse(e.getMessage().contains("--backing"), e.getMessage());
        // /proc names other processes' files: not a directory to allow
        e = assertThrows(IOException.class, () -> BackingPolicy.of(List.of(Path.of("/proc/self/fd")), false));
        assertTrue(e.getMessage().contains("is under /proc"), e.getMessage());
    }

    @Test
    void chainsInsideTheAllowedDirectoriesOpenAndRead() throws Exception {
        Path base = bases.resolve("base.raw");
        byte[] data = new byte[2 * MIB];
        new Random(3).nextBytes(data);
        Files.write(base, data);
        Path sub = Files.createDirectories(bases.resolve("sub"));
        Files.createSymbolicLink(sub.resolve("base-link.raw"), base); // a link that stays inside is fine
        Path mid = overlay(sub.resolve("mid.qcow2"), "base-link.raw", "raw");
        QemuTools.ok("qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 64k 64k", mid.toString());
        Path top = overlay(tenant.resolve("disk.qcow2"), mid.toString(), "qcow2");
        byte[] expected = data.clone();
        java.util.Arrays.fill(expected, 65536, 2 * 65536, (byte) 0x5a);
        for (BackingPolicy p :
                List.of(basesOnly(), BackingPolicy.of(List.of(sub, bases), false), BackingPolicy.of(null, false))) {
            try (DiskImage d = Images.open(top, null, false, false, p)) {
                assertArrayEquals(java.util.Arrays.copyOf(expected, MIB), read(d, 0, MIB), p.toString());
            }
        }
        // the allowed directory named through a link of its own
        Path alias = Files.createSymbolicLink(dir.resolve("alias"), bases);
        try (DiskImage d = Images.open(top, null, true, false, BackingPolicy.of(List.of(alias), false))) {
            assertArrayEquals(java.util.Arrays.copyOf(expected, MIB), read(d, 0, MIB));
        }
        // a backing file that does not exist: the image named it, so not the open's remedy for a missing image
        Path missing = overlay(
                tenant.resolve("missing.qcow2"), bases.resolve("gone.raw").toString(), "raw");
        String m = refused(missing, basesOnly()).getMessage();
        assertTrue(m.contains("names a backing file that does not exist: " + bases.resolve("gone.raw")), m);
        assertFalse(m.contains("truncate"), m);
        assertTrue(m.contains(": refuse the image; if it is yours, restore its base image there, or rebase it"), m);
        // an empty list allows no backing file
        m = refused(top, BackingPolicy.of(List.of(), false)).getMessage();
        assertTrue(m.contains("no backing file is allowed"), m);
        // the directory must exist
        IOException e = assertThrows(IOException.class, () -> BackingPolicy.of(List.of(dir.resolve("missing")), false));
        assertTrue(e.getMessage().contains("does not exist"), e.getMessage());
        // nor be one every user can write (where anyone may put a file for an image to name), nor the root
        Path open = Files.createDirectories(dir.resolve("open"));
        Files.setPosixFilePermissions(open, java.nio.file.attribute.PosixFilePermissions.fromString("rwxrwxrwx"));
        e = assertThrows(IOException.class, () -> BackingPolicy.of(List.of(open), false));
        assertTrue(e.getMessage().contains("is writable by every user, as /tmp and /dev/shm are"), e.getMessage());
        e = assertThrows(IOException.class, () -> BackingPolicy.of(List.of(Path.of("/")), false));
        assertTrue(e.getMessage().contains("is the root directory"), e.getMessage());
    }
}
