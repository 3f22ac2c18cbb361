// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.extension.AnnotatedElementContext;
import org.junit.jupiter.api.extension.ExtensionContext;
import org.junit.jupiter.api.io.TempDirFactory;

/**
 * A {@code @TempDir} on a disk file system, for tests that look at what the page cache has not written back
 * ({@code @TempDir(factory = DiskTempDir.class)}): under /var/tmp, which is kept on disk, where /tmp is often a tmpfs
 * (Debian 13, Fedora, Arch) — whose pages have no disk to go to and are never clean, whatever is flushed.
 */
public final class DiskTempDir implements TempDirFactory {
    @Override
    public Path createTempDirectory(AnnotatedElementContext element, ExtensionContext context) throws Exception {
        Path varTmp = Path.of("/var/tmp");
        Path parent = Files.isDirectory(varTmp) && Files.isWritable(varTmp)
                ? varTmp
                : Path.of(System.getProperty("java.io.tmpdir"));
        return Files.createTempDirectory(parent, "iovirt-junit-");
    }
}
