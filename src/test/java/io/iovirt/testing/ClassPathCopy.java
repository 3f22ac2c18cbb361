// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.io.IOException;
import java.net.URISyntaxException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.List;
import java.util.stream.Stream;

/**
 * This build's code copied where another user can read it, for a child JVM a test runs as that user (setpriv): the
 * class path itself may not be readable by anyone else — Maven's repository is under root's home, and so is the
 * checkout when CI clones it there (/root is mode 0700 on Debian), whether the classes are target/classes (Surefire)
 * or target/iovirt.jar (Failsafe).
 */
public final class ClassPathCopy {
    private ClassPathCopy() {}

    /**
     * Copies the jar or classes directory each of {@code classes} was loaded from into {@code dir} (which the other
     * user must be able to traverse), every copy readable by all; returns the class path of the copies.
     */
    public static String readableByAll(Path dir, Class<?>... classes) throws IOException {
        List<String> cp = new ArrayList<>();
        for (Class<?> c : classes) {
            Path source;
            try {
                source = Path.of(
                        c.getProtectionDomain().getCodeSource().getLocation().toURI());
            } catch (URISyntaxException e) {
                throw new IOException("where " + c.getName() + " was loaded from is not a file: " + e.getMessage(), e);
            }
            Path copy = dir.resolve(cp.size() + "-" + source.getFileName());
            try (Stream<Path> files = Files.walk(source)) {
                for (Path f : (Iterable<Path>) files::iterator) {
                    Path t = copy.resolve(source.relativize(f).toString());
                    if (Files.isDirectory(f)) {
                        Files.createDirectories(t);
                        Files.setPosixFilePermissions(t, PosixFilePermissions.fromString("rwxr-xr-x"));
                    } else {
                        Files.copy(f, t);
                        Files.setPosixFilePermissions(t, PosixFilePermissions.fromString("rw-r--r--"));
                    }
                }
            }
            cp.add(copy.toString());
        }
        return String.join(":", cp);
    }
}
