// SPDX-License-Identifier: Apache-2.0
package io.iovirt.pci;

import io.iovirt.util.ActionableException;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Optional;
import java.util.regex.Pattern;
import java.util.stream.Stream;

/**
 * Typed, strict readers (and the few writers) over a kernel pseudo-filesystem mounted at {@code root} — /sys or
 * /proc on a real host, a directory of fixture files in tests. Every malformed, truncated, unreadable or missing
 * file becomes a {@link ActionableException} naming the file, what was expected and what was found.
 */
public final class SysfsTree {
    /** sysfs attributes are at most a page; anything bigger is not an attribute. */
    private static final int ATTRIBUTE_LIMIT = 64 * 1024;
    /** /proc/mounts, /proc/interrupts, /proc/cpuinfo on big machines. */
    private static final int TEXT_LIMIT = 16 * 1024 * 1024;

    private static final Pattern HEX = Pattern.compile("0x[0-9a-fA-F]+");

    private final Path root;
    private final String what;

    /**
     * @param root where the filesystem is mounted
     * @param what the option that chose it, for remedies ("--sysfs-root")
     */
    public SysfsTree(Path root, String what) {
        this.root = root;
        this.what = what;
    }

    public Path root() {
        return root;
    }

    /** The file for a path relative to the root ("bus/pci/devices"). */
    public Path path(String relative) {
        while (relative.startsWith("/")) {
            relative = relative.substring(1);
        }
        return relative.isEmpty() ? root : root.resolve(relative);
    }

    public boolean exists(String relative) {
        return Files.exists(path(relative), LinkOption.NOFOLLOW_LINKS);
    }

    public boolean isDirectory(String relative) {
        return Files.isDirectory(path(relative));
    }

    /** The trimmed content, or empty when the file does not exist. */
    public Optional<String> readOptional(String relative) {
        Path p = path(relative);
        if (!Files.exists(p)) {
            return Optional.empty();
        }
        return Optional.of(readBounded(p, ATTRIBUTE_LIMIT).strip());
    }

    /** The trimmed content of an attribute that must exist. */
    public String read(String relative) {
        Path p = path(relative);
        if (!Files.exists(p)) {
            throw new ActionableException("cannot read " + p + ": no such file", damagedRemedy());
        }
        return readBounded(p, ATTRIBUTE_LIMIT).strip();
    }

    /** A whole text file such as /proc/mounts (bounded), or empty when it does not exist. */
    public Optional<String> readTextOptional(String relative) {
        Path p = path(relative);
        if (!Files.exists(p)) {
            return Optional.empty();
        }
        return Optional.of(readBounded(p, TEXT_LIMIT));
    }

    /**
     * A hexadecimal attribute printed by the kernel as 0x followed by exactly {@code digits} digits (vendor 4,
     * class 6, revision 2).
     */
    public int readHex(String relative, int digits) {
        String s = read(relative);
        if (s.length() == 2 + digits && HEX.matcher(s).matches()) {
            return Integer.parseUnsignedInt(s.substring(2), 16);
        }
        throw malformed(relative, "a " + (digits * 4) + "-bit hex value like 0x" + "0".repeat(digits), s);
    }

    /** A hex attribute if present, else -1. */
    public int readHexOptional(String relative, int digits) {
        return exists(relative) ? readHex(relative, digits) : -1;
    }

    /** A non-negative decimal attribute. */
    public long readDecimal(String relative) {
        String s = read(relative);
        if (!s.isEmpty() && s.length() <= 18 && s.chars().allMatch(c -> c >= '0' && c <= '9')) {
            return Long.parseLong(s);
        }
        throw malformed(relative, "a decimal number", s);
    }

    /** A decimal attribute if present, else -1. */
    public long readDecimalOptional(String relative) {
        return exists(relative) ? readDecimal(relative) : -1;
    }

    /** The last component of a symlink's target ("driver" → "vfio-pci"), or empty when there is no link. */
    public Optional<String> linkName(String relative) {
        return readLink(relative).map(t -> {
            Path name = t.getFileName();
            return name == null ? "" : name.toString();
        });
    }

    /** The raw target of a symlink, or empty when there is no link. */
    public Optional<Path> readLink(String relative) {
        Path p = path(relative);
        if (!Files.isSymbolicLink(p)) {
            if (Files.exists(p, LinkOption.NOFOLLOW_LINKS)) {
                throw new ActionableException(p + " should be a symbolic link but is a regular file", damagedRemedy());
            }
            return Optional.empty();
        }
        try {
            return Optional.of(Files.readSymbolicLink(p));
        } catch (java.nio.file.NoSuchFileException e) {
            // gone since it was seen: the kernel unbinds and binds drivers under us (a VF it is still probing)
            return Optional.empty();
        } catch (IOException e) {
            throw new ActionableException("cannot read link " + p + ": " + reason(e), damagedRemedy(), e);
        }
    }

    /** The link's target resolved against the tree (both relative and absolute targets stay inside the root). */
    public Optional<Path> resolveLink(String relative) {
        return readLink(relative).map(t -> {
            if (t.isAbsolute()) {
                return path(t.toString()).normalize();
            }
            return path(relative).getParent().resolve(t).normalize();
        });
    }

    /** Sorted names in a directory; empty when it does not exist. */
    public List<String> list(String relative) {
        Path p = path(relative);
        if (!Files.isDirectory(p)) {
            return List.of();
        }
        try (Stream<Path> s = Files.list(p)) {
            List<String> names = new ArrayList<>();
            s.forEach(x -> names.add(x.getFileName().toString()));
            names.sort(null);
            return names;
        } catch (IOException e) {
            throw new ActionableException("cannot list " + p + ": " + reason(e), permissionRemedy(e), e);
        }
    }

    /**
     * Writes an attribute in one write(2) call, as the kernel expects. The file must exist: on sysfs a missing
     * attribute means the kernel does not offer that control.
     */
    public void write(String relative, String value) {
        Path p = path(relative);
        if (!Files.exists(p)) {
            throw new ActionableException(
                    "cannot write " + p + ": no such file (the kernel does not offer this control)",
                    "check the kernel version and that the device and driver exist");
        }
        byte[] bytes = value.getBytes(StandardCharsets.US_ASCII);
        // FileOutputStream without append → O_WRONLY|O_CREAT|O_TRUNC, one write() for a small array.
        try (FileOutputStream out = new FileOutputStream(p.toFile())) {
            out.write(bytes);
        } catch (IOException e) {
            throw new ActionableException(
                    "writing '" + printable(value.strip()) + "' to " + p + " failed: " + reason(e),
                    permissionRemedy(e),
                    e);
        }
    }

    private String readBounded(Path p, int limit) {
        try (InputStream in = Files.newInputStream(p)) {
            byte[] data = in.readNBytes(limit + 1);
            if (data.length > limit) {
                throw new ActionableException(
                        p + " is larger than " + limit + " bytes: not a kernel attribute", damagedRemedy());
            }
            return new String(data, StandardCharsets.ISO_8859_1);
        } catch (NoSuchFileException e) {
            throw new ActionableException("cannot read " + p + ": no such file", damagedRemedy(), e);
        } catch (IOException e) {
            throw new ActionableException("cannot read " + p + ": " + reason(e), permissionRemedy(e), e);
        }
    }

    public ActionableException malformed(String relative, String expected, String found) {
        String hint = found.isEmpty() ? " (empty: truncated?)" : "";
        if (!found.isEmpty() && expected.contains("hex") && HEX.matcher(found).matches()) {
            hint = " (too few or too many digits: truncated?)";
        } else if (!found.isEmpty() && "0x".startsWith(found)) {
            hint = " (truncated?)";
        }
        return new ActionableException(
                path(relative) + ": expected " + expected + ", found '" + printable(found) + "'" + hint,
                damagedRemedy());
    }

    private String damagedRemedy() {
        return "the tree under " + root + " is not a complete kernel " + (what.contains("proc") ? "procfs" : "sysfs")
                + "; check that " + what + " points at a mounted filesystem";
    }

    private static String permissionRemedy(IOException e) {
        return e instanceof AccessDeniedException ? "run as root" : "check dmesg for the kernel's reason";
    }

    public static String reason(IOException e) {
        if (e instanceof AccessDeniedException) {
            return "permission denied";
        }
        if (e instanceof NoSuchFileException) {
            return "no such file";
        }
        String m = e.getMessage();
        return m == null ? e.getClass().getSimpleName() : m;
    }

    /** Text safe to echo in a one-line message ({@link io.iovirt.util.Printable}), at most 60 characters. */
    public static String printable(String s) {
        return io.iovirt.util.Printable.ofBytes(s, 60);
    }
}
