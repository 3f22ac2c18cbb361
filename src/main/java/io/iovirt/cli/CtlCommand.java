// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.daemon.RpcClient;
import io.iovirt.util.Json;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;
import picocli.CommandLine.Parameters;

/** {@code iovirt ctl}: one control request to a running daemon, the answer as a table or JSON. */
@Command(
        name = "ctl",
        mixinStandardHelpOptions = true,
        footerHeading = "%nExamples:%n",
        footer = {
            "  iovirt ctl --control /run/iovirt/control blk.add image=/var/lib/vm1.raw \\",
            "      socket=/run/iovirt/vm1-disk.sock queues=2",
            "  iovirt ctl --control /run/iovirt/control blk.resize id=blk0 size=20G",
            "  iovirt ctl --control /run/iovirt/control net.port.add net=net0 kind=vhost-user \\",
            "      path=/run/iovirt/vm1-net.sock",
            "  iovirt ctl --control /run/iovirt/control libvirt-xml blk0,net0/port0"
        },
        description = {
            "Send one request to a running 'iovirt daemon' and print the answer (a table, or --json).",
            "Methods: version, blk.add, blk.remove, blk.list, blk.info, blk.resize,",
            "blk.set-readonly, net.add, net.remove, net.port.add, net.port.remove,",
            "net.list, net.macs, nbd.add, nbd.remove, nbd.list, stats, libvirt-xml,",
            "reload (docs/api.md)."
        })
final class CtlCommand implements Callable<Integer> {
    static final int EXIT_USAGE = Contract.USAGE;

    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(names = "--control", required = true, paramLabel = "PATH", description = "The daemon's control socket.")
    Path control;

    @Option(names = "--json", description = "Print the result as JSON.")
    boolean json;

    @Option(
            names = "--timeout",
            paramLabel = "S",
            defaultValue = "30",
            description = "Seconds to wait for the answer (default ${DEFAULT-VALUE}).")
    int timeout;

    @Parameters(index = "0", paramLabel = "METHOD", description = "The method, e.g. blk.list.")
    String method;

    @Parameters(
            index = "1..*",
            paramLabel = "KEY=VALUE",
            description = "Parameters (libvirt-xml also takes the device ids alone).")
    List<String> args = new ArrayList<>();

    @Override
    public Integer call() throws Exception {
        Map<String, Object> params = new LinkedHashMap<>();
        for (String a : args) {
            int eq = a.indexOf('=');
            if (eq <= 0) {
                if (method.equals("libvirt-xml") && !params.containsKey("id")) {
                    params.put("id", a);
                    continue;
                }
                throw new CommandLine.ParameterException(
                        spec.commandLine(), "'" + a + "' is not KEY=VALUE (e.g. id=blk0)");
            }
            String k = a.substring(0, eq);
            if (params.containsKey(k)) {
                throw new CommandLine.ParameterException(spec.commandLine(), "parameter '" + k + "' given twice");
            }
            // sent as the string it is: the daemon converts where it expects a number or a boolean, and only it
            // knows which (serial=00042 is a string; turned into a number here it became 42)
            params.put(k, a.substring(eq + 1));
        }
        PrintWriter out = spec.commandLine().getOut();
        Object result;
        try (RpcClient c = RpcClient.connect(control, Duration.ofSeconds(Math.max(1, timeout)))) {
            result = c.call(method, params);
        } catch (RpcClient.RemoteError e) {
            return failed(
                    e.getMessage() + " (error " + e.code() + ")",
                    e.code() == -32602 || e.code() == -32601 ? EXIT_USAGE : Contract.FAILED);
        } catch (IOException e) {
            return failed(e.getMessage(), Contract.FAILED);
        }
        if (json) {
            out.println(Json.write(result));
        } else if (method.equals("libvirt-xml")
                && result instanceof Map<?, ?> m
                && m.get("xml") instanceof String xml) {
            out.print(xml);
        } else {
            print(out, result, "");
        }
        out.flush();
        return 0;
    }

    /**
     * A failed call: the one-line message on stderr and, with --json, the JSON error object on stdout too (docs/cli.md's
     * contract for every command; ctl handles its errors itself, so the shared handler never sees them).
     */
    private int failed(String message, int exit) {
        spec.commandLine().getErr().println("iovirt ctl: " + message);
        spec.commandLine().getErr().flush();
        if (json) {
            Contract.jsonError(spec.commandLine().getOut(), spec.commandLine(), exit, message, null);
        }
        return exit;
    }

    static void print(PrintWriter out, Object v, String indent) {
        if (v instanceof List<?> l) {
            if (l.isEmpty()) {
                out.println(indent + "(none)");
            } else if (l.stream().allMatch(x -> x instanceof Map)) {
                table(out, l, indent);
            } else {
                for (Object x : l) {
                    out.println(indent + scalar(x));
                }
            }
        } else if (v instanceof Map<?, ?> m) {
            int w = 0;
            for (Object k : m.keySet()) {
                w = Math.max(w, k.toString().length());
            }
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (e.getValue() instanceof List<?> l
                        && !l.isEmpty()
                        && l.stream().allMatch(x -> x instanceof Map)) {
                    out.println(indent + e.getKey() + ":");
                    table(out, l, indent + "  ");
                } else if (e.getValue() instanceof Map<?, ?> sub) {
                    out.println(indent + e.getKey() + ":");
                    print(out, sub, indent + "  ");
                } else {
                    out.printf("%s%-" + w + "s  %s%n", indent, e.getKey(), scalar(e.getValue()));
                }
            }
        } else {
            out.println(indent + scalar(v));
        }
    }

    /** Rows of objects as aligned columns; nested lists of objects follow their row, indented. */
    private static void table(PrintWriter out, List<?> rows, String indent) {
        Set<String> cols = new LinkedHashSet<>();
        for (Object r : rows) {
            for (Map.Entry<?, ?> e : ((Map<?, ?>) r).entrySet()) {
                if (!(e.getValue() instanceof List<?> l && !l.isEmpty() && l.get(0) instanceof Map)) {
                    cols.add(e.getKey().toString());
                }
            }
        }
        List<String> cl = new ArrayList<>(cols);
        int[] w = new int[cl.size()];
        for (int i = 0; i < w.length; i++) {
            w[i] = cl.get(i).length();
            for (Object r : rows) {
                w[i] = Math.max(w[i], scalar(((Map<?, ?>) r).get(cl.get(i))).length());
            }
        }
        StringBuilder h = new StringBuilder(indent);
        for (int i = 0; i < w.length; i++) {
            h.append(String.format("%-" + w[i] + "s  ", cl.get(i).toUpperCase().replace('_', ' ')));
        }
        out.println(h.toString().stripTrailing());
        for (Object r : rows) {
            Map<?, ?> m = (Map<?, ?>) r;
            StringBuilder b = new StringBuilder(indent);
            for (int i = 0; i < w.length; i++) {
                b.append(String.format("%-" + w[i] + "s  ", scalar(m.get(cl.get(i)))));
            }
            out.println(b.toString().stripTrailing());
            for (Map.Entry<?, ?> e : m.entrySet()) {
                if (e.getValue() instanceof List<?> l && !l.isEmpty() && l.get(0) instanceof Map) {
                    out.println(indent + "  " + e.getKey() + ":");
                    table(out, l, indent + "    ");
                }
            }
        }
    }

    private static String scalar(Object v) {
        if (v == null) {
            return "-";
        }
        if (v instanceof List<?> l) {
            List<String> s = new ArrayList<>();
            for (Object x : l) {
                s.add(scalar(x));
            }
            return String.join(",", s);
        }
        if (v instanceof Map<?, ?> m) {
            return Json.compact(m);
        }
        return v.toString();
    }
}
