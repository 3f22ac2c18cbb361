// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The daemon's configuration file (docs/api.md, "Configuration file"): a JSON object with {@code blk} (exports,
 * each with the parameters of blk.add and a mandatory {@code id}), {@code nbd} (NBD exports, with the parameters of
 * nbd.add and a mandatory {@code id}) and {@code net} (switches, with the parameters of net.add and a {@code ports}
 * list of net.port.add parameters). Read at start and on SIGHUP; {@link #apply} turns
 * the difference between the file and what runs into adds and removes. Devices added through the API are never
 * touched by a reload; an entry whose id the API already uses is reported and skipped.
 */
final class ConfigFile {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    record Desired(
            Map<String, BlkExport.Spec> blks,
            Map<String, NbdExportEntry.Spec> nbds,
            Map<String, NetSwitch.Spec> nets,
            Map<String, Map<String, NetSwitch.PortSpec>> ports) {}

    private ConfigFile() {}

    /** Reads and checks the whole file; nothing is applied when any entry is invalid. */
    @SuppressWarnings("unchecked")
    static Desired read(Path file, Daemon d) throws IOException {
        String text;
        try {
            text = Files.readString(file);
        } catch (java.nio.file.NoSuchFileException e) {
            throw new IOException(
                    "configuration " + file + " does not exist; create it ({} is a configuration with no devices;"
                            + " the Debian package installs one) or start without --config",
                    e);
        } catch (IOException e) {
            throw new IOException("cannot read configuration " + file + ": " + e.getMessage(), e);
        }
        Object root;
        try {
            root = JsonParser.parse(text);
        } catch (JsonParser.JsonException e) {
            throw new IOException("configuration " + file + " is not valid JSON: " + e.getMessage());
        }
        if (!(root instanceof Map<?, ?> top)) {
            throw new IOException(
                    "configuration " + file + ": the top level must be an object with \"blk\" and \"net\" lists");
        }
        Map<String, BlkExport.Spec> blks = new LinkedHashMap<>();
        Map<String, NbdExportEntry.Spec> nbds = new LinkedHashMap<>();
        Map<String, NetSwitch.Spec> nets = new LinkedHashMap<>();
        Map<String, Map<String, NetSwitch.PortSpec>> ports = new LinkedHashMap<>();
        try {
            for (Object k : top.keySet()) {
                if (!k.equals("blk") && !k.equals("nbd") && !k.equals("net")) {
                    throw new RpcException(
                            RpcException.INVALID_PARAMS, "unknown top-level key '" + k + "' (known: blk, nbd, net)");
                }
            }
            List<Object> blkList = list(top.get("blk"), "blk");
            for (int i = 0; i < blkList.size(); i++) {
                Map<String, Object> e = object(blkList.get(i), "blk[" + i + "]");
                Params p = new Params(file + ": blk[" + i + "]", e)
                        .allow(
                                "id",
                                "image",
                                "socket",
                                "queues",
                                "readonly",
                                "direct",
                                "serial",
                                "io-engine",
                                "format");
                p.id("id"); // mandatory in a file: reloads match entries by id
                BlkExport.Spec s = d.blkSpec(p, null);
                if (blks.put(s.id(), s) != null) {
                    throw new RpcException(RpcException.INVALID_PARAMS, "blk id '" + s.id() + "' appears twice");
                }
            }
            List<Object> nbdList = list(top.get("nbd"), "nbd");
            for (int i = 0; i < nbdList.size(); i++) {
                Params p = new Params(file + ": nbd[" + i + "]", object(nbdList.get(i), "nbd[" + i + "]"))
                        .allow("id", "image", "socket", "readonly", "format");
                NbdExportEntry.Spec s =
                        d.nbdSpec(p, null); // the id is mandatory in a file: reloads match entries by id
                if (nbds.put(s.id(), s) != null || blks.containsKey(s.id())) {
                    throw new RpcException(RpcException.INVALID_PARAMS, "id '" + s.id() + "' appears twice");
                }
            }
            List<Object> netList = list(top.get("net"), "net");
            for (int i = 0; i < netList.size(); i++) {
                Map<String, Object> e = new LinkedHashMap<>(object(netList.get(i), "net[" + i + "]"));
                Object portsValue = e.remove("ports");
                Params p = new Params(file + ": net[" + i + "]", e)
                        .allow("id", "mtu", "mac-aging", "macs-per-port", "poll-threads");
                p.id("id");
                NetSwitch.Spec s = d.netSpec(p, null);
                if (nets.put(s.id(), s) != null || blks.containsKey(s.id()) || nbds.containsKey(s.id())) {
                    throw new RpcException(RpcException.INVALID_PARAMS, "id '" + s.id() + "' appears twice");
                }
                Map<String, NetSwitch.PortSpec> ps = new LinkedHashMap<>();
                List<Object> pl = list(portsValue, "net[" + i + "].ports");
                for (int j = 0; j < pl.size(); j++) {
                    Params pp = new Params(file + ": net[" + i + "].ports[" + j + "]", object(pl.get(j), "port"))
                            .allow("id", "kind", "path", "ifname", "queues", "mac");
                    pp.id("id");
                    NetSwitch.PortSpec port = d.portSpec(pp, null);
                    if (ps.put(port.id(), port) != null) {
                        throw new RpcException(
                                RpcException.INVALID_PARAMS,
                                "port id '" + port.id() + "' appears twice in switch " + s.id());
                    }
                }
                ports.put(s.id(), ps);
            }
        } catch (RpcException e) {
            throw new IOException("configuration " + file + ": " + e.getMessage());
        }
        return new Desired(blks, nbds, nets, ports);
    }

    private static List<Object> list(Object v, String what) throws RpcException {
        if (v == null) {
            return List.of();
        }
        if (v instanceof List<?> l) {
            return new ArrayList<>(l);
        }
        throw new RpcException(RpcException.INVALID_PARAMS, "\"" + what + "\" must be a list");
    }

    @SuppressWarnings("unchecked")
    private static Map<String, Object> object(Object v, String what) throws RpcException {
        if (v instanceof Map<?, ?> m) {
            return (Map<String, Object>) m;
        }
        throw new RpcException(RpcException.INVALID_PARAMS, what + " must be an object");
    }

    /** What a reload did, for the log and the test. */
    record Outcome(List<String> added, List<String> removed, List<String> changed, List<String> failed) {
        @Override
        public String toString() {
            return "added " + added + ", removed " + removed + ", changed " + changed + ", failed " + failed;
        }
    }

    /**
     * Makes the running configuration-file devices match {@code want}: removes those no longer listed, replaces
     * changed ones (a read-only switch alone is applied in place), adds new ones. One entry failing does not stop
     * the others.
     */
    static Outcome apply(Daemon d, Desired want) {
        List<String> added = new ArrayList<>();
        List<String> removed = new ArrayList<>();
        List<String> changed = new ArrayList<>();
        List<String> failed = new ArrayList<>();
        synchronized (d.lock()) {
            // blk
            for (BlkExport e : List.copyOf(d.blksLocked().values())) {
                BlkExport.Spec w = want.blks().get(e.spec.id());
                if (!e.fromConfig) {
                    continue;
                }
                if (w == null) {
                    run(failed, "blk " + e.spec.id(), () -> d.removeBlk(e.spec.id()));
                    removed.add("blk " + e.spec.id());
                } else if (!w.equals(e.spec)) {
                    BlkExport.Spec sameButRo = new BlkExport.Spec(
                            w.id(),
                            w.image(),
                            w.socket(),
                            w.queues(),
                            e.spec.readOnly(),
                            w.direct(),
                            w.serial(),
                            w.engine(),
                            w.format());
                    if (sameButRo.equals(e.spec) && !e.spec.readOnly()) {
                        run(failed, "blk " + w.id(), () -> {
                            try {
                                e.device.setReadOnly(w.readOnly());
                            } catch (IOException ex) {
                                throw new RpcException(RpcException.FAILED, ex.getMessage());
                            }
                        });
                    } else {
                        run(failed, "blk " + w.id(), () -> {
                            d.removeBlk(w.id());
                            d.addBlk(w, true);
                        });
                    }
                    changed.add("blk " + w.id());
                }
            }
            for (BlkExport.Spec w : want.blks().values()) {
                BlkExport cur = d.blksLocked().get(w.id());
                if (cur == null && !d.netsLocked().containsKey(w.id())) {
                    if (run(failed, "blk " + w.id(), () -> d.addBlk(w, true))) {
                        added.add("blk " + w.id());
                    }
                } else if (cur != null && !cur.fromConfig || d.netsLocked().containsKey(w.id())) {
                    failed.add("blk " + w.id() + ": the id is in use by a device added through the API");
                }
            }
            // nbd: a changed entry is replaced (its clients reconnect, as QEMU's NBD client does)
            for (NbdExportEntry e : List.copyOf(d.nbdsLocked().values())) {
                if (!e.fromConfig) {
                    continue;
                }
                NbdExportEntry.Spec w = want.nbds().get(e.spec.id());
                if (w == null) {
                    run(failed, "nbd " + e.spec.id(), () -> d.removeNbd(e.spec.id()));
                    removed.add("nbd " + e.spec.id());
                } else if (!w.equals(e.spec)) {
                    run(failed, "nbd " + w.id(), () -> {
                        d.removeNbd(w.id());
                        d.addNbd(w, true);
                    });
                    changed.add("nbd " + w.id());
                }
            }
            for (NbdExportEntry.Spec w : want.nbds().values()) {
                NbdExportEntry cur = d.nbdsLocked().get(w.id());
                if (cur == null) {
                    if (run(failed, "nbd " + w.id(), () -> d.addNbd(w, true))) {
                        added.add("nbd " + w.id());
                    }
                } else if (!cur.fromConfig) {
                    failed.add("nbd " + w.id() + ": the id is in use by a device added through the API");
                }
            }
            // net
            for (NetSwitch n : List.copyOf(d.netsLocked().values())) {
                if (!n.fromConfig) {
                    continue;
                }
                NetSwitch.Spec w = want.nets().get(n.spec.id());
                if (w == null) {
                    run(failed, "net " + n.spec.id(), () -> d.removeNet(n.spec.id()));
                    removed.add("net " + n.spec.id());
                } else if (!w.equals(n.spec)) {
                    run(failed, "net " + w.id(), () -> d.removeNet(w.id())); // recreated below with its ports
                    changed.add("net " + w.id());
                }
            }
            for (NetSwitch.Spec w : want.nets().values()) {
                NetSwitch n = d.netsLocked().get(w.id());
                if (n == null && !d.blksLocked().containsKey(w.id())) {
                    if (!run(failed, "net " + w.id(), () -> d.addNet(w, true))) {
                        continue;
                    }
                    n = d.netsLocked().get(w.id());
                    if (!changed.contains("net " + w.id())) {
                        added.add("net " + w.id());
                    }
                } else if (n == null || !n.fromConfig) {
                    failed.add("net " + w.id() + ": the id is in use by a device added through the API");
                    continue;
                }
                NetSwitch sw = n;
                Map<String, NetSwitch.PortSpec> wantPorts = want.ports().get(w.id());
                for (NetSwitch.PortEntry pe : List.copyOf(sw.ports.values())) {
                    if (!pe.fromConfig()) {
                        continue;
                    }
                    NetSwitch.PortSpec wp = wantPorts.get(pe.spec().id());
                    if (wp == null || !wp.equals(pe.spec())) {
                        sw.removePort(pe.spec().id());
                        (wp == null ? removed : changed)
                                .add("port " + w.id() + "/" + pe.spec().id());
                    }
                }
                for (NetSwitch.PortSpec wp : wantPorts.values()) {
                    if (!sw.ports.containsKey(wp.id())) {
                        if (run(failed, "port " + w.id() + "/" + wp.id(), () -> d.addPort(sw, wp, true))
                                && !changed.contains("port " + w.id() + "/" + wp.id())) {
                            added.add("port " + w.id() + "/" + wp.id());
                        }
                    }
                }
            }
        }
        Outcome o = new Outcome(added, removed, changed, failed);
        LOG.log(
                failed.isEmpty() ? System.Logger.Level.INFO : System.Logger.Level.WARNING,
                "configuration applied: " + o);
        return o;
    }

    private interface Action {
        void run() throws RpcException;
    }

    private static boolean run(List<String> failed, String what, Action a) {
        try {
            a.run();
            return true;
        } catch (RpcException | RuntimeException e) {
            failed.add(what + ": " + e.getMessage());
            return false;
        }
    }
}
