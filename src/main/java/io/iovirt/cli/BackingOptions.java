// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.storage.BackingPolicy;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import picocli.CommandLine.Model.CommandSpec;
import picocli.CommandLine.Option;

/**
 * {@code --backing-dir} and {@code --backing-devices} for every command that serves an image (a {@code @Mixin}):
 * where the backing files of a qcow2 image may be ({@link BackingPolicy}). Without either, QEMU's behaviour: any
 * file or block device the process can read.
 */
public final class BackingOptions {
    @Option(
            names = "--backing-dir",
            paramLabel = "DIR",
            description = "Open qcow2 backing files only from under DIR, or only the block device DIR itself "
                    + "(repeatable; each file of the chain is checked on its real path, symbolic links and '..' "
                    + "resolved). Set it when an image comes from someone you do not trust: its header may name any "
                    + "file as its backing file (default: anywhere). DIR and its parents must be writable by you "
                    + "alone and hold no tenant's images: every image may name any file in it. Never /dev.")
    List<Path> dirs = new ArrayList<>();

    @Option(
            names = "--backing-devices",
            description = "Allow block devices as backing files (their real path, e.g. /dev/dm-3, must be under a "
                    + "--backing-dir too; a device named itself with --backing-dir is allowed without this). "
                    + "Default: allowed without --backing-dir, refused with it.")
    boolean devices;

    /** The policy asked for; a directory that does not exist is a usage error of {@code spec}'s command. */
    public BackingPolicy policy(CommandSpec spec) {
        if (dirs.isEmpty()) {
            return BackingPolicy.UNRESTRICTED;
        }
        try {
            return BackingPolicy.of(dirs, devices);
        } catch (IOException e) {
            throw Contract.usage(spec, "--backing-dir: " + e.getMessage());
        }
    }
}
