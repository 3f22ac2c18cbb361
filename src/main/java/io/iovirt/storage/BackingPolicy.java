// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.Printable;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Collectors;

/**
 * Where the backing files of a qcow2 chain may be: the operator's answer to an image from someone not trusted (a
 * tenant's upload), whose header may name any file the backend can read (/etc/shadow, another tenant's disk, a block
 * device) as its backing file — and whose guest would then read through to it, while the shared lock taken on it
 * fences that file's writers.
 *
 * <p>Every file below the top of a chain is checked, level by level, on its real path (symbolic links and {@code ..}
 * resolved, so neither escapes): once by path before it is opened ({@link #checkPath}), and again on the descriptor
 * it was opened as ({@link #checkOpened}: the kernel's name for it, which must still name that very inode, and
 * fstat's type), so that a path swapped between the two is caught before anything of it is served or locked. The
 * image named by the operator (the top) is never checked: the operator chose it.
 *
 * <p>The policy is about paths, and daemon-wide: every tenant may name any file under every allowed directory, so the
 * allowed directories (and their parents) must be writable by the operator alone and hold no tenant's images (a hard
 * link, bind mount or device node put inside one is allowed like any file there). A backing file in a directory every
 * user can write (a shared drop directory inside an allowed one, or an allowed one made so since) is refused.
 *
 * <p>{@link #UNRESTRICTED} is QEMU's behaviour and the default: any regular file or block device (a base image on an
 * LVM volume is an ordinary setup, and an existing host's chains keep opening). Other file types (character
 * devices, directories, FIFOs, sockets) are refused whatever the policy.
 *
 * @param dirs    the directories (real paths) backing files must be under, or block devices (real paths) that may be
 *                backing files themselves; null: anywhere; empty: no backing file
 * @param devices block devices may be backing files (a device's real path, /dev/dm-3 say, must still be under one of
 *                {@code dirs} unless that is null); a device named itself in {@code dirs} is allowed either way
 * @param config  named by the daemon's configuration file (its messages name the keys {@code backing.dirs} and
 *                {@code backing.devices}), not by the options {@code --backing-dir} and {@code --backing-devices}
 * @param numbers each block device named in {@code dirs} (by its real path): the name the operator gave it and its
 *                device number ({@code st_rdev}) when named. A device is allowed as itself only while that name
 *                still resolves to it and it still has that number: device-mapper and loop nodes are named after
 *                their numbers, and the numbers are reused as volumes come and go, so /dev/dm-3 may be another
 *                volume now; the operator's /dev/mapper/vg-base is what says which volume was meant
 */
public record BackingPolicy(List<Path> dirs, boolean devices, boolean config, Map<Path, Named> numbers) {
    /** A block device the operator allowed by naming it: the name given ({@code /dev/mapper/vg-base}) and number. */
    public record Named(Path name, long rdev) {}

    /** QEMU's behaviour: any regular file or block device the backend can read. */
    public static final BackingPolicy UNRESTRICTED = new BackingPolicy(null, true, false);

    public BackingPolicy {
        dirs = dirs == null ? null : List.copyOf(dirs);
        numbers = numbers == null ? Map.of() : Map.copyOf(numbers);
    }

    /** A policy naming no block device in {@code dirs}. */
    public BackingPolicy(List<Path> dirs, boolean devices, boolean config) {
        this(dirs, devices, config, Map.of());
    }

    /**
     * The policy of an operator's options: {@code dirs} (each resolved to its real path now) and whether block
     * devices may back images. No directory list and devices allowed is {@link #UNRESTRICTED}.
     *
     * @param dirs null: anywhere; empty: no backing file at all
     * @throws IOException a directory does not exist or is not a directory (nor a block device), naming it and what
     *                     to do
     */
    public static BackingPolicy of(List<Path> dirs, boolean devices) throws IOException {
        return of(dirs, devices, false);
    }

    /** {@link #of(List, boolean)} of the daemon's configuration file ({@code config}) or of the options. */
    public static BackingPolicy of(List<Path> dirs, boolean devices, boolean config) throws IOException {
        if (dirs == null) {
            return devices ? UNRESTRICTED : new BackingPolicy(null, false, config);
        }
        List<Path> real = new ArrayList<>();
        Map<Path, Named> numbers = new HashMap<>();
        for (Path d : dirs) {
            Path r;
            try {
                r = d.toRealPath();
            } catch (IOException e) {
                throw new IOException("backing directory " + Printable.of(d) + " does not exist or cannot be resolved:"
                        + " create it, or name the directory the base images are in");
            }
            boolean device;
            try {
                FileIo.Stat st = FileIo.stat(r);
                device = st.isBlockDevice();
                if (device) {
                    numbers.put(r, new Named(d.toAbsolutePath(), st.rdev()));
                }
            } catch (LinuxException e) {
                device = false;
            }
            if (!device && !java.nio.file.Files.isDirectory(r)) {
                throw new IOException("backing directory " + Printable.of(d) + " is not a directory (nor a block"
                        + " device): name the directory the base images are in, or the block device itself");
            }
            if (r.getNameCount() == 0) {
                throw new IOException("backing directory " + Printable.of(d) + " is the root directory (" + r + "),"
                        + " which would allow every file of the host: name the directory the base images are in");
            }
            if (!device && worldWritable(r)) {
                throw new IOException(
                        "backing directory " + Printable.of(d) + " (" + Printable.of(r) + ") is writable by"
                                + " every user, as /tmp and /dev/shm are: anyone could put there a file or link for an"
                                + " image to name; name a directory only you can write, the one the base images are in");
            }
            if (r.startsWith("/proc")) {
                throw new IOException("backing directory " + Printable.of(d) + " is under /proc (" + r + "), whose"
                        + " files name other processes' files: name the directory the base images are in");
            }
            real.add(r);
        }
        return new BackingPolicy(real, devices, config, numbers);
    }

    private static Path realPathOrNull(Path p) {
        try {
            return p.toRealPath();
        } catch (IOException e) {
            return null;
        }
    }

    private static boolean worldWritable(Path dir) throws IOException {
        try {
            return (FileIo.stat(dir).mode() & 02) != 0;
        } catch (LinuxException e) {
            return false; // cannot be looked at: every backing file's check under it says why
        }
    }

    /** True for QEMU's behaviour: nothing is checked. */
    public boolean unrestricted() {
        return dirs == null && devices;
    }

    /**
     * Refuses backing file {@code backing} of {@code overlay} by its path, before anything opens or locks it: also one
     * that does not exist (the image named it, so the open's remedy for a missing image, to create it, is not the
     * answer). One that cannot be looked at passes: its open says why, and {@link #checkOpened} decides.
     *
     * @throws IOException the backing file's real path or type is not allowed: what, why and what to do
     */
    public void checkPath(Path overlay, Path backing) throws IOException {
        if (unrestricted()) {
            return;
        }
        Path real;
        FileIo.Stat st;
        try {
            real = backing.toRealPath();
            st = FileIo.stat(real);
        } catch (java.nio.file.NoSuchFileException e) {
            // not the open's remedy for a missing image (create it): the image, not the operator, named this file
            throw new IOException("qcow2 image " + Printable.of(overlay) + " names a backing file that does not exist: "
                    + Printable.of(backing) + " (or a link on its path is dangling): refuse the image; if it is yours,"
                    + " restore its base image there, or rebase it onto the base with 'qemu-img rebase -u -b BASE -F"
                    + " FORMAT'");
        } catch (IOException e) {
            return; // unreadable: the open reports it with its remedy; nothing is opened here
        }
        check(overlay, backing, real, st);
    }

    /**
     * Refuses backing file {@code backing} of {@code overlay} as it was opened ({@code fd}): its real path is the
     * kernel's (/proc/self/fd), which must name the very inode opened now (stat of it and fstat of {@code fd} agree:
     * not a file deleted or renamed since, nor a path of another mount namespace that only looks like an allowed
     * one), its type fstat's — not the path's, which may have changed since {@link #checkPath}.
     *
     * @throws IOException not allowed, or the descriptor cannot be looked at: what, why and what to do
     */
    public void checkOpened(Path overlay, Path backing, Fd fd) throws IOException {
        if (unrestricted()) {
            return;
        }
        Path real;
        FileIo.Stat st;
        try {
            real = Path.of(EventFd.kindOf(fd));
            st = FileIo.stat(fd);
        } catch (LinuxException e) {
            throw new IOException(
                    "cannot check backing file " + Printable.of(backing) + " of " + Printable.of(overlay)
                            + " against the" + " allowed backing directories: " + Printable.of(e.getMessage())
                            + "; mount /proc",
                    e);
        } catch (java.nio.file.InvalidPathException e) {
            // the kernel's name for it is no path (a NUL in it): nothing to mount; refused as not checkable
            throw new IOException(
                    "cannot check backing file " + Printable.of(backing) + " of " + Printable.of(overlay)
                            + " against the"
                            + " allowed backing directories: the kernel's name for the file opened is not a valid"
                            + " path (" + Printable.of(e.getReason()) + "): refuse the image",
                    e);
        }
        FileIo.Stat there;
        try {
            there = real.isAbsolute() ? FileIo.stat(real) : null;
        } catch (LinuxException e) {
            there = null;
        }
        if (there == null || !there.sameFile(st)) {
            throw new IOException("backing file " + Printable.of(backing) + " of " + Printable.of(overlay) + " changed"
                    + " while it was opened (the file opened is no longer at " + Printable.of(real) + "): open the"
                    + " image again once nothing renames or replaces its backing files");
        }
        check(overlay, backing, real, st);
    }

    private void check(Path overlay, Path backing, Path real, FileIo.Stat st) throws IOException {
        String named =
                real.equals(backing) ? Printable.of(backing) : Printable.of(backing) + " (" + Printable.of(real) + ")";
        String of = named + " of " + Printable.of(overlay);
        String refuse = "an image from someone you do not trust must not name it: refuse the image (converting it"
                + " would copy " + named + "'s data into the copy)";
        if (real.startsWith("/proc")) {
            throw new IOException("backing file " + of + " is under /proc, whose files name other processes' (and"
                    + " other mount namespaces') files: " + refuse);
        }
        Named allowed = numbers.get(real);
        Path now = allowed == null ? null : realPathOrNull(allowed.name()); // looked up once
        if (allowed != null && !real.equals(now)) {
            throw new IOException("backing file " + of + " is the block device allowed as "
                    + Printable.of(allowed.name())
                    + ", but that name "
                    + (now == null ? "no longer exists" : "now names " + Printable.of(now))
                    + " (the volume was removed or renamed, and its"
                    + " device number may now be another volume's): " + refuse + "; if the image and the device are"
                    + " yours, name the device again ("
                    + (config ? "reload the configuration file" : "restart with" + " --backing-dir") + ")");
        }
        long number = allowed == null ? 0 : allowed.rdev();
        if (allowed != null && (!st.isBlockDevice() || st.rdev() != number)) {
            throw new IOException("backing file " + of + " is no longer the block device allowed as "
                    + Printable.of(allowed.name()) + " (device " + majorMinor(number) + " when allowed, "
                    + (st.isBlockDevice() ? "device " + majorMinor(st.rdev()) : st.kind()) + " now: its number was"
                    + " reused, or the node replaced): " + refuse + "; if the image and the device are yours, name"
                    + " the device again (" + (config ? "reload the configuration file" : "restart with --backing-dir")
                    + ")");
        }
        boolean namedItself = dirs != null && dirs.contains(real);
        if (!st.isRegularFile() && !st.isBlockDevice()) {
            throw new IOException(
                    "backing file " + of + " is " + st.kind() + ", not a regular file or a block device: " + refuse);
        }
        if (st.isBlockDevice() && !devices && !namedItself) {
            // a name that says which volume (a /dev/mapper or by-id link), not the node named after a reusable number
            String name = backing.equals(real) ? null : Printable.of(backing);
            String allowIt = name != null
                    ? "allow the device itself with "
                            + (config
                                    ? "\"backing\": {\"dirs\": [\"" + name + "\"]} in the configuration file"
                                    : "--backing-dir " + name)
                    : "allow the device itself by a name that says which volume (under /dev/mapper or"
                            + " /dev/disk/by-id, not " + Printable.of(real) + ", a node named after a number that is"
                            + " reused) in " + (config ? "the configuration file's backing.dirs" : "--backing-dir");
            throw new IOException("backing file " + of + " is a block device, and backing devices are not allowed: "
                    + refuse + "; if the image and the device are yours, "
                    + (dirs == null // naming it in dirs would refuse every other backing file
                            ? "allow backing devices with "
                                    + (config
                                            ? "\"backing\": {\"devices\": true} in the configuration file"
                                            : "--backing-devices")
                            : allowIt + " (never all of /dev)"));
        }
        if (dirs != null && !namedItself && dirs.stream().noneMatch(real::startsWith)) {
            throw new IOException("backing file " + of + " is outside the allowed backing directories "
                    + (dirs.isEmpty() ? "(none: no backing file is allowed)" : describe()) + ": " + refuse
                    + "; if the image and " + named + " are yours, allow its directory"
                    + (config ? " in the configuration file's backing.dirs" : " with --backing-dir")
                    + " (one only you can write, holding no tenant's images)");
        }
        if (dirs != null && !namedItself) {
            refuseWorldWritableOnTheWay(real, of, refuse);
        }
    }

    /**
     * Refuses {@code real} when a directory between it and the outermost allowed directory it is under (that one
     * included: its mode may have changed since the policy was made) is writable by every user, as a shared drop directory
     * inside the allowed ones would be: anyone could put there a file or link for an image to name, and the policy
     * would allow it as the operator's.
     */
    private void refuseWorldWritableOnTheWay(Path real, String of, String refuse) throws IOException {
        // The outermost allowed directory holding it: with allowed directories nested, an outer one made writable by
        // every user lets anyone replace the inner one with their own.
        Path top = null;
        for (Path d : dirs) {
            if (real.startsWith(d) && (top == null || d.getNameCount() < top.getNameCount())) {
                top = d;
            }
        }
        for (Path d = real.getParent(); top != null && d != null && d.startsWith(top); d = d.getParent()) {
            if (worldWritable(d)) {
                throw new IOException("backing file " + of + " is in " + Printable.of(d) + ", "
                        + (d.equals(top)
                                ? "an allowed backing directory"
                                : "a directory under the allowed " + Printable.of(top))
                        + " that every user can write (as /tmp): anyone could put a file or link there for an image"
                        + " to name: " + refuse + "; if the image is yours, make the directory writable by you alone"
                        + " ('chmod o-w " + Printable.of(d) + "') or move its base image out of it");
            }
        }
    }

    /** A device number as ls -l shows it: major, minor. */
    private static String majorMinor(long rdev) {
        return (rdev >>> 32) + ":" + (rdev & 0xffffffffL);
    }

    /** The allowed directories, for messages. */
    public String describe() {
        if (dirs == null) {
            return "any directory";
        }
        return dirs.stream().map(Printable::of).collect(Collectors.joining(", "));
    }
}
