// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;

/** Listening on a UNIX socket path the way a long-running server should: reuse stale paths, never steal live ones. */
public final class SocketPaths {
    private SocketPaths() {}

    /**
     * Binds and listens on {@code path}. A socket file left behind by a process that died is removed first; a path
     * some process still listens on, or a path that is not a socket, is refused with a message saying so.
     */
    public static UnixSocket listen(Path path) throws IOException {
        return listen(path, 4, SocketAccess.ownerOnly(), "path");
    }

    /** As {@link #listen(Path)}, the socket file's mode and group set from {@code access} before listening. */
    public static UnixSocket listen(Path path, SocketAccess access) throws IOException {
        return listen(path, 4, access, "path");
    }

    /**
     * As {@link #listen(Path, SocketAccess)} with a backlog of {@code backlog}; {@code option} names what a user
     * changes to pick another path (e.g. {@code "--socket path"}) in the messages.
     */
    public static UnixSocket listen(Path path, int backlog, SocketAccess access, String option) throws IOException {
        if (Files.exists(path, LinkOption.NOFOLLOW_LINKS)) {
            BasicFileAttributes a = Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            if (!a.isOther()) {
                throw new IOException(path + " exists and is not a socket; remove it or choose another " + option);
            }
            boolean live;
            try {
                live = UnixSocket.listenedOn(path);
            } catch (LinuxException e) {
                throw new IOException("cannot tell whether " + path + " is in use: " + e.getMessage(), e);
            }
            if (live) {
                throw new IOException("another process is listening on " + path + ": it is in use by another running "
                        + "server; stop it or choose another " + option);
            }
            Files.deleteIfExists(path); // nobody listens: a stale socket from an earlier run
        } else if (path.getParent() != null && !Files.isDirectory(path.getParent())) {
            throw new IOException("directory " + path.getParent() + " for socket " + path
                    + " does not exist; create it " + "or choose another " + option);
        }
        try {
            return UnixSocket.listen(path, backlog, access);
        } catch (LinuxException e) {
            throw new IOException("cannot listen on " + path + ": " + e.getMessage(), e);
        }
    }

    /**
     * Which file is at {@code path} now — its device and inode ({@link BasicFileAttributes#fileKey}) — to tell later
     * whether it is still the socket file a server made ({@link #removeIfSame}); null when it cannot be read.
     */
    public static Object fileKey(Path path) {
        try {
            return Files.readAttributes(path, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS)
                    .fileKey();
        } catch (IOException | SecurityException e) {
            return null;
        }
    }

    /**
     * Removes the socket file at {@code path} if it is still the one {@code key} ({@link #fileKey}, taken once the
     * server listened) names: a server's listener shut down refuses connections, so while it stops the path looks
     * free, and another server may have replaced the file with its own — which is not removed. Returns false when
     * another file is there now; nothing is there: true. A null {@code key} removes whatever is there.
     */
    public static boolean removeIfSame(Path path, Object key) throws IOException {
        if (key != null && !key.equals(fileKey(path))) {
            return !Files.exists(path, LinkOption.NOFOLLOW_LINKS); // gone already, or another file there now
        }
        Files.deleteIfExists(path);
        return true;
    }
}
