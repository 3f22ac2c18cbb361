// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.util.ActionableException;
import io.iovirt.util.ByteSizes;
import java.math.BigDecimal;
import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import java.util.regex.Pattern;

/**
 * A request's named parameters with typed, checked access. Values may come as JSON types or as strings (the
 * {@code ctl} client and the configuration file pass {@code key=value} text), so "4", 4, "true" and true are all
 * accepted where they make sense. Unknown names are an error, so a typo is not silently ignored.
 */
final class Params {
    private static final Pattern ID = Pattern.compile("[A-Za-z0-9][A-Za-z0-9_.-]{0,63}");

    private final String method;
    private final Map<String, Object> values;

    Params(String method, Map<String, Object> values) {
        this.method = method;
        this.values = values == null ? Map.of() : new LinkedHashMap<>(values);
    }

    /** Refuses parameter names other than {@code allowed}. */
    Params allow(String... allowed) throws RpcException {
        Set<String> ok = Set.of(allowed);
        for (String k : values.keySet()) {
            if (!ok.contains(k)) {
                throw RpcException.params(method + ": unknown parameter '" + k + "' (known: "
                        + String.join(", ", new TreeSet<>(ok)) + ")");
            }
        }
        return this;
    }

    boolean has(String name) {
        return values.get(name) != null;
    }

    String string(String name) throws RpcException {
        Object v = values.get(name);
        if (v == null) {
            throw RpcException.params(method + ": missing parameter '" + name + "'");
        }
        if (v instanceof Map || v instanceof java.util.List) {
            throw RpcException.params(method + ": parameter '" + name + "' must be a string");
        }
        String s = v.toString();
        if (s.isEmpty()) {
            throw RpcException.params(method + ": parameter '" + name + "' is empty");
        }
        if (s.length() > 4096) {
            throw RpcException.params(method + ": parameter '" + name + "' is longer than 4096 characters");
        }
        return s;
    }

    String string(String name, String dflt) throws RpcException {
        return has(name) ? string(name) : dflt;
    }

    /**
     * A file path, made absolute. Text that cannot be a path (it holds a NUL character) is an invalid parameter,
     * not an internal error.
     */
    Path path(String name) throws RpcException {
        String s = string(name);
        try {
            return Path.of(s).toAbsolutePath();
        } catch (InvalidPathException e) {
            throw RpcException.params(method + ": parameter '" + name + "' is not a valid path (" + e.getReason()
                    + "): '" + printable(s) + "'");
        }
    }

    /** A device, switch or port id: letters, digits, '_', '.', '-', at most 64, starting with a letter or digit. */
    String id(String name) throws RpcException {
        String s = string(name);
        if (!ID.matcher(s).matches()) {
            throw RpcException.params(method + ": '" + name + "' must be 1-64 letters, digits, '_', '.' or '-' "
                    + "starting with a letter or digit, not '" + printable(s) + "'");
        }
        return s;
    }

    String id(String name, String dflt) throws RpcException {
        return has(name) ? id(name) : dflt;
    }

    long integer(String name, long dflt, long min, long max) throws RpcException {
        if (!has(name)) {
            return dflt;
        }
        Object v = values.get(name);
        long x;
        try {
            x = switch (v) {
                case Long l -> l;
                case Integer i -> i;
                case BigDecimal d -> d.longValueExact();
                case String s -> Long.parseLong(s.trim());
                default -> throw new NumberFormatException();
            };
        } catch (NumberFormatException | ArithmeticException e) {
            throw RpcException.params(method + ": parameter '" + name + "' must be an integer, not '"
                    + printable(String.valueOf(v)) + "'");
        }
        if (x < min || x > max) {
            throw RpcException.params(method + ": parameter '" + name + "' must be " + min + ".." + max + ", got " + x);
        }
        return x;
    }

    /** A size in bytes: an integer, or a string with a K/M/G/T suffix (binary units). */
    long size(String name) throws RpcException {
        Object v = values.get(name);
        if (v == null) {
            throw RpcException.params(method + ": missing parameter '" + name + "' (e.g. " + name + "=2G)");
        }
        if (v instanceof Long l) {
            if (l < 0) {
                throw RpcException.params(method + ": parameter '" + name + "' must not be negative");
            }
            return l;
        }
        try {
            return ByteSizes.parse(v.toString());
        } catch (ActionableException e) {
            throw RpcException.params(method + ": parameter '" + name + "': '" + printable(v.toString())
                    + "' is not a size (write e.g. 4G, 512M or 1073741824)");
        }
    }

    boolean bool(String name, boolean dflt) throws RpcException {
        Object v = values.get(name);
        if (v == null) {
            return dflt;
        }
        if (v instanceof Boolean b) {
            return b;
        }
        return switch (v.toString().toLowerCase(java.util.Locale.ROOT)) {
            case "true", "yes", "on", "1" -> true;
            case "false", "no", "off", "0" -> false;
            default ->
                throw RpcException.params(method + ": parameter '" + name + "' must be true or false, not '"
                        + printable(v.toString()) + "'");
        };
    }

    static String printable(String s) {
        return io.iovirt.util.Printable.of(s, 80);
    }
}
