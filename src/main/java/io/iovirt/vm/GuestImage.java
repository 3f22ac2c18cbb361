// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vm;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.UncheckedIOException;
import java.net.URISyntaxException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayDeque;
import java.util.Deque;
import java.util.HashMap;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.TimeUnit;
import java.util.function.Consumer;

/**
 * The guest kernel and initramfs built (and cached) by {@code scripts/build-guest.sh}.
 *
 * @param version       the cache stamp (hash of the build script)
 * @param kernelRelease e.g. {@code 6.1.0-57-amd64}
 * @param kernel        what QEMU boots: the uncompressed ELF vmlinux (PVH) when it could be extracted, else bzImage
 * @param initrd        the base initramfs (busybox, modules, /init)
 * @param fioLayer      a cpio archive with fio and its libraries, to append to {@code initrd} for guests that run fio
 */
public record GuestImage(String version, String kernelRelease, Path kernel, Path initrd, Path fioLayer) {

    public static final String SCRIPT = "scripts/build-guest.sh";
    private static final long BUILD_TIMEOUT_MINUTES = 15;
    private static volatile GuestImage cached;

    /** The image, built on first use; progress lines of a build go to stderr. */
    public static GuestImage ensure() {
        return ensure(line -> System.err.println(line));
    }

    /**
     * Runs the build script (a no-op taking well under a second when the cache is current) and returns the image.
     * A build downloads the kernel package and takes ~15-60 s; each progress line goes to {@code progress}.
     */
    public static synchronized GuestImage ensure(Consumer<String> progress) {
        if (cached != null && cached.exists()) {
            return cached;
        }
        Path script = locateScript();
        ProcessBuilder pb = new ProcessBuilder("bash", script.toString())
                .redirectInput(ProcessBuilder.Redirect.from(new java.io.File("/dev/null")));
        Path manifestOut;
        try {
            manifestOut = Files.createTempFile("iovirt-guest-manifest", ".txt");
        } catch (IOException e) {
            throw new UncheckedIOException("cannot create a temporary file", e);
        }
        pb.redirectOutput(manifestOut.toFile());
        Deque<String> lastLines = new ArrayDeque<>();
        try {
            Process p = pb.start();
            try (BufferedReader err =
                    new BufferedReader(new InputStreamReader(p.getErrorStream(), StandardCharsets.UTF_8))) {
                for (String line; (line = err.readLine()) != null; ) {
                    progress.accept(line);
                    lastLines.addLast(line);
                    if (lastLines.size() > 5) {
                        lastLines.removeFirst();
                    }
                }
            }
            if (!p.waitFor(BUILD_TIMEOUT_MINUTES, TimeUnit.MINUTES)) {
                p.descendants().forEach(ProcessHandle::destroyForcibly);
                p.destroyForcibly();
                throw new GuestException(script + " did not finish within " + BUILD_TIMEOUT_MINUTES + " minutes");
            }
            if (p.exitValue() != 0) {
                throw new GuestException("building the guest image failed (" + script + " exited with " + p.exitValue()
                        + "): " + String.join(" / ", lastLines));
            }
            GuestImage image = parse(Files.readString(manifestOut));
            cached = image;
            return image;
        } catch (IOException e) {
            throw new GuestException(
                    "cannot run " + script + ": " + e.getMessage() + " — bash is required to build the guest image", e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new GuestException("interrupted while building the guest image", e);
        } finally {
            try {
                Files.deleteIfExists(manifestOut);
            } catch (IOException ignored) {
                // a leftover temp file is harmless
            }
        }
    }

    static GuestImage parse(String manifest) {
        Map<String, String> kv = new HashMap<>();
        for (String line : manifest.split("\n")) {
            int eq = line.indexOf('=');
            if (eq > 0) {
                kv.put(line.substring(0, eq).trim(), line.substring(eq + 1).trim());
            }
        }
        for (String key : new String[] {"version", "kernel_release", "bzimage", "initrd", "fio_layer"}) {
            if (!kv.containsKey(key)) {
                throw new GuestException(SCRIPT + " printed no '" + key + "=' line; its output was:\n" + manifest);
            }
        }
        Path kernel = Path.of(kv.getOrDefault("kernel", kv.get("bzimage")));
        GuestImage image = new GuestImage(
                kv.get("version"),
                kv.get("kernel_release"),
                kernel,
                Path.of(kv.get("initrd")),
                Path.of(kv.get("fio_layer")));
        if (!image.exists()) {
            throw new GuestException(SCRIPT + " reported files that do not exist: " + image
                    + " — delete the cache (${IOVIRT_CACHE:-~/.cache/iovirt}/guest) and retry");
        }
        return image;
    }

    private boolean exists() {
        return Files.isRegularFile(kernel) && Files.isRegularFile(initrd) && Files.isRegularFile(fioLayer);
    }

    /**
     * The project root holds the script: $IOVIRT_HOME, else the first ancestor of this code's location (the
     * classes directory or the jar in target/) that has it, else the working directory.
     */
    static Path locateScript() {
        String home = Optional.ofNullable(System.getenv("IOVIRT_HOME")).orElse(System.getProperty("iovirt.home"));
        if (home != null) {
            Path p = Path.of(home, SCRIPT);
            if (Files.isRegularFile(p)) {
                return p;
            }
            throw new GuestException("IOVIRT_HOME=" + home + " has no " + SCRIPT);
        }
        try {
            Path here = Path.of(GuestImage.class
                    .getProtectionDomain()
                    .getCodeSource()
                    .getLocation()
                    .toURI());
            for (Path dir = here; dir != null; dir = dir.getParent()) {
                if (Files.isRegularFile(dir.resolve(SCRIPT))) {
                    return dir.resolve(SCRIPT);
                }
            }
        } catch (URISyntaxException | RuntimeException ignored) {
            // fall through to the working directory
        }
        Path cwd = Path.of(SCRIPT).toAbsolutePath();
        if (Files.isRegularFile(cwd)) {
            return cwd;
        }
        throw new GuestException("cannot find " + SCRIPT + " — run from the iovirt checkout or set IOVIRT_HOME to it");
    }
}
