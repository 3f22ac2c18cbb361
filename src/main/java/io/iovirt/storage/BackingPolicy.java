// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage;

import io.iovirt.linux.EventFd;
import io.iovirt.linux.Fd;
import io.iovirt.linux.FileIo;
import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Collectors;

/**
 * Where the backing files of a qcow2 chain may be: the operator's answer to an image from someone not trusted (a
 * tenant's upload), whose header may name any file the backend can read (/etc/shadow, another tenant's disk, a block
 * device) as its backing file — and whose guest would then read through to it, while the shared lock taken on it
 * fences that file's writers.
 *
 * <p>Every file below the top of a chain is checked, level by level, on its real path (symbolic links and {@code ..}
 * resolved, so neither escapes): once by path before it is locked or opened ({@link #checkPath}), and again on the
 * descriptor it was opened as ({@link #checkOpened}: the kernel's name for it and fstat's type), so that a path
 * swapped between the two is caught before anything of it is served. The image named by the operator (the top) is
 * never checked: the operator chose it.
 *
 * <p>{@link #UNRESTRICTED} is QEMU's behaviour and the default: any regular file or block device (a base image on an
 * LVM volume is an ordinary setup, and an existing host's chains keep opening). Other file types (character
 * devices, FIFOs, sockets) are refused whatever the policy, by the open itself ({@link RawImage}).
 *
 * @param dirs    the directories (real paths) backing files must be under; null: anywhere; empty: no backing file
 * @param devices block devices may be backing files (a device's real path, /dev/dm-3 say, must still be under one of
 *                {@code dirs} unless that is null)
 */
public record BackingPolicy(List<Path> dirs, boolean devices) {
    /** QEMU's behaviour: any regular file or block device the backend can read. */
    public static final BackingPolicy UNRESTRICTED = new BackingPolicy(null, true);

    public BackingPolicy {
        dirs = dirs == null ? null : List.copyOf(dirs);
    }

    /**
     * The policy of an operator's options: {@code dirs} (each resolved to its real path now) and whether block
     * devices may back images. No directory list and devices allowed is {@link #UNRESTRICTED}.
     *
     * @param dirs null: anywhere; empty: no backing file at all
     * @throws IOException a directory does not exist or is not a directory, naming it and what to do
     */
    public static BackingPolicy of(List<Path> dirs, boolean devices) throws IOException {
        if (dirs == null) {
            return devices ? UNRESTRICTED : new BackingPolicy(null, false);
        }
        List<Path> real = new ArrayList<>();
        for (Path d : dirs) {
            Path r;
            try {
                r = d.toRealPath();
            } catch (IOException e) {
                throw new IOException("backing directory " + d + " does not exist or cannot be resolved (" + e
                        + "): create it, or name the directory the base images are in");
            }
            if (!java.nio.file.Files.isDirectory(r)) {
                throw new IOException("backing directory " + d + " is not a directory: name the directory the base"
                        + " images are in");
            }
            real.add(r);
        }
        return new BackingPolicy(real, devices);
    }

    /** True for QEMU's behaviour: nothing is checked. */
    public boolean unrestricted() {
        return dirs == null && devices;
    }

    /**
     * Refuses backing file {@code backing} of {@code overlay} by its path, before anything opens or locks it. A file
     * that does not exist (yet) passes: its open says it is missing, and {@link #checkOpened} decides if it appears.
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
        } catch (IOException e) {
            return; // missing or unreadable: the open reports it with its remedy; nothing is opened here
        }
        check(overlay, backing, real, st);
    }

    /**
     * Refuses backing file {@code backing} of {@code overlay} as it was opened ({@code fd}): its real path is the
     * kernel's (/proc/self/fd), its type fstat's — not the path's, which may have changed since {@link #checkPath}.
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
        } catch (LinuxException | java.nio.file.InvalidPathException e) {
            throw new IOException(
                    "cannot check backing file " + backing + " of " + overlay + " against the allowed"
                            + " backing directories: " + e.getMessage() + "; mount /proc",
                    e);
        }
        check(overlay, backing, real, st);
    }

    private void check(Path overlay, Path backing, Path real, FileIo.Stat st) throws IOException {
        String named = real.equals(backing) ? backing.toString() : backing + " (" + real + ")";
        if (!st.isRegularFile() && !devices) {
            throw new IOException("backing file " + named + " of " + overlay + " is " + st.kind() + ", and backing"
                    + " devices are not allowed: convert the image with 'qemu-img convert -O qcow2 " + overlay
                    + " NEW.qcow2' (no backing file), or allow block devices as backing files with"
                    + " --backing-devices (daemon configuration: \"backing\": {\"devices\": true})");
        }
        if (dirs != null && dirs.stream().noneMatch(real::startsWith)) {
            throw new IOException("backing file " + named + " of " + overlay + " is outside the allowed backing"
                    + " directories " + (dirs.isEmpty() ? "(none: no backing file is allowed)" : describe()) + ":"
                    + " convert the image with 'qemu-img convert -O qcow2 " + overlay + " NEW.qcow2' (no backing"
                    + " file), or add the directory with --backing-dir (daemon configuration: \"backing\": {\"dirs\":"
                    + " [...]})");
        }
    }

    /** The allowed directories, for messages. */
    public String describe() {
        if (dirs == null) {
            return "any directory";
        }
        return dirs.stream().map(Path::toString).collect(Collectors.joining(", "));
    }
}
