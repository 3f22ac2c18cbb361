// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

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

    /**
     * What a file asks for. {@code switchPorts}: the state file's {@code ports} list — ports added through the API
     * to switches the file does not define (those of the configuration file), by switch id; always empty for a
     * configuration file. {@code blksReadOnlyNow}: the state file's disks marked {@code readonly-now} (always empty
     * for a configuration file). {@code portSwitches}: the switches of {@code switchPorts} as their entries recorded
     * them ({@code switch}), to create as switches of the API when the configuration file no longer defines them.
     */
    record Desired(
            Map<String, BlkExport.Spec> blks,
            java.util.Set<String> blksReadOnlyNow,
            Map<String, NbdExportEntry.Spec> nbds,
            Map<String, NetSwitch.Spec> nets,
            Map<String, Map<String, NetSwitch.PortSpec>> ports,
            Map<String, Map<String, NetSwitch.PortSpec>> switchPorts,
            Map<String, NetSwitch.Spec> portSwitches,
            io.iovirt.storage.BackingPolicy backing) {}

    /**
     * The configuration file's daemon-wide key {@code backing} ({@link #backing}): where the backing files of the
     * images the daemon opens may be. Its keys: {@code dirs}, {@code devices}.
     */
    static final String BACKING = "backing";

    static final String[] BACKING_PARAMS = {"dirs", "devices"};

    /**
     * A state file's key in a {@code ports} entry: its switch's parameters (those of net.add but the id), so that the
     * port comes back on a switch of its own when the configuration file no longer defines that switch.
     */
    static final String SWITCH = "switch";

    /** A state file's blk key: blk.set-readonly switched the disk, opened writable, read-only ({@link #blkEntry}). */
    static final String READ_ONLY_NOW = "readonly-now";

    private ConfigFile() {}

    /** Reads and checks the whole file; nothing is applied when any entry is invalid. */
    static Desired read(Path file, Daemon d) throws IOException {
        String text;
        try {
            text = Files.readString(file);
        } catch (java.nio.file.NoSuchFileException e) {
            throw new IOException(
                    "configuration " + file + " does not exist; create it ({} is a configuration with no devices;"
                            + " the Debian package installs one) or start without --config",
                    e);
        } catch (java.nio.charset.MalformedInputException e) {
            throw new IOException(
                    "configuration " + file + " is not UTF-8 text (" + notUtf8(file)
                            + "); JSON files are UTF-8: save it as UTF-8 (iconv -f latin1 -t utf-8 can convert it)",
                    e);
        } catch (IOException e) {
            throw new IOException("cannot read configuration " + file + ": " + e.getMessage(), e);
        }
        return parse(text, "configuration", file, d);
    }

    /** Where {@code file}'s first byte that is not UTF-8 is, for the message of a file that is not UTF-8 text. */
    static String notUtf8(Path file) {
        try {
            java.nio.ByteBuffer b = java.nio.ByteBuffer.wrap(Files.readAllBytes(file));
            java.nio.charset.CoderResult r = java.nio.charset.StandardCharsets.UTF_8
                    .newDecoder()
                    .decode(b, java.nio.CharBuffer.allocate(b.remaining()), true);
            return r.isError() ? "its byte " + b.position() + " is not part of a UTF-8 character" : "it changed";
        } catch (IOException e) {
            return "cannot read it again: " + e.getMessage();
        }
    }

    /**
     * Checks a whole file's text ({@code kind}: "configuration" or "state file", for the messages). A state file
     * may also have a top-level {@code ports} list of net.port.add parameters (with {@code net}).
     */
    static Desired parse(String text, String kind, Path file, Daemon d) throws IOException {
        String what = kind + " " + file;
        boolean state = kind.equals("state file");
        Object root;
        try {
            root = JsonParser.parse(text);
        } catch (JsonParser.JsonException e) {
            throw new IOException(what + " is not valid JSON: " + e.getMessage());
        }
        if (!(root instanceof Map<?, ?> top)) {
            throw new IOException(what + ": the top level must be an object with \"blk\", \"nbd\" and \"net\" lists");
        }
        Map<String, BlkExport.Spec> blks = new LinkedHashMap<>();
        java.util.Set<String> blksReadOnlyNow = new java.util.LinkedHashSet<>();
        Map<String, NbdExportEntry.Spec> nbds = new LinkedHashMap<>();
        Map<String, NetSwitch.Spec> nets = new LinkedHashMap<>();
        Map<String, Map<String, NetSwitch.PortSpec>> ports = new LinkedHashMap<>();
        Map<String, Map<String, NetSwitch.PortSpec>> switchPorts = new LinkedHashMap<>();
        Map<String, NetSwitch.Spec> portSwitches = new LinkedHashMap<>();
        String name = file.toString(); // before each entry's position in its messages
        io.iovirt.storage.BackingPolicy backing;
        try {
            for (Object k : top.keySet()) {
                if (!k.equals("blk")
                        && !k.equals("nbd")
                        && !k.equals("net")
                        && !(state && k.equals("ports"))
                        && !(!state && k.equals(BACKING))) {
                    throw new RpcException(
                            RpcException.INVALID_PARAMS,
                            "unknown top-level key '" + k + "' (known: blk, nbd, net"
                                    + (state ? ", ports)" : ", " + BACKING + ")"));
                }
            }
            // a state file records devices, not the operator's policy: it keeps the configuration file's (null)
            backing = state ? null : backing(top.get(BACKING), name);
            List<Object> blkList = list(top.get("blk"), "blk");
            for (int i = 0; i < blkList.size(); i++) {
                Map<String, Object> e = new LinkedHashMap<>(object(blkList.get(i), "blk[" + i + "]"));
                Object roNow = state ? e.remove(READ_ONLY_NOW) : null; // a configuration file refuses it as unknown
                Params p = new Params(name + ": blk[" + i + "]", e).allow(Daemon.BLK_PARAMS);
                p.id("id"); // mandatory in a file: reloads match entries by id
                BlkExport.Spec s = d.blkSpec(p, null);
                if (roNow != null
                        && new Params(name + ": blk[" + i + "]", Map.of(READ_ONLY_NOW, roNow))
                                .bool(READ_ONLY_NOW, false)) {
                    blksReadOnlyNow.add(s.id());
                }
                if (blks.put(s.id(), s) != null) {
                    throw new RpcException(RpcException.INVALID_PARAMS, "blk id '" + s.id() + "' appears twice");
                }
            }
            List<Object> nbdList = list(top.get("nbd"), "nbd");
            for (int i = 0; i < nbdList.size(); i++) {
                Params p = new Params(name + ": nbd[" + i + "]", object(nbdList.get(i), "nbd[" + i + "]"))
                        .allow(Daemon.NBD_PARAMS);
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
                Params p = new Params(name + ": net[" + i + "]", e).allow(Daemon.NET_PARAMS);
                p.id("id");
                NetSwitch.Spec s = d.netSpec(p, null);
                if (nets.put(s.id(), s) != null || blks.containsKey(s.id()) || nbds.containsKey(s.id())) {
                    throw new RpcException(RpcException.INVALID_PARAMS, "id '" + s.id() + "' appears twice");
                }
                Map<String, NetSwitch.PortSpec> ps = new LinkedHashMap<>();
                List<Object> pl = list(portsValue, "net[" + i + "].ports");
                for (int j = 0; j < pl.size(); j++) {
                    Params pp = new Params(name + ": net[" + i + "].ports[" + j + "]", object(pl.get(j), "port"))
                            .allow(Daemon.PORT_PARAMS);
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
            List<Object> portList = list(top.get("ports"), "ports");
            for (int j = 0; j < portList.size(); j++) {
                Map<String, Object> pe = new LinkedHashMap<>(object(portList.get(j), "ports[" + j + "]"));
                Object swValue = pe.remove(SWITCH);
                Params pp = new Params(name + ": ports[" + j + "]", pe).allow(Daemon.PORT_ADD_PARAMS);
                String net = pp.id("net");
                if (swValue != null) {
                    Map<String, Object> sw = new LinkedHashMap<>(object(swValue, "ports[" + j + "]." + SWITCH));
                    sw.put("id", net);
                    NetSwitch.Spec spec = d.netSpec(
                            new Params(name + ": ports[" + j + "]." + SWITCH, sw).allow(Daemon.NET_PARAMS), null);
                    NetSwitch.Spec had = portSwitches.putIfAbsent(net, spec);
                    if (had != null && !had.equals(spec)) {
                        throw new RpcException(
                                RpcException.INVALID_PARAMS,
                                "ports[" + j + "]." + SWITCH + " differs from an earlier port's of switch " + net);
                    }
                }
                pp.id("id");
                NetSwitch.PortSpec port = d.portSpec(pp, null);
                if (nets.containsKey(net)) {
                    throw new RpcException(
                            RpcException.INVALID_PARAMS,
                            "ports[" + j + "] names switch '" + net + "', which the file defines: list it in that"
                                    + " switch's ports");
                }
                if (switchPorts.computeIfAbsent(net, k -> new LinkedHashMap<>()).put(port.id(), port) != null) {
                    throw new RpcException(
                            RpcException.INVALID_PARAMS, "port id '" + port.id() + "' appears twice in switch " + net);
                }
            }
        } catch (RpcException e) {
            throw new IOException(what + ": " + e.getMessage());
        }
        return new Desired(blks, blksReadOnlyNow, nbds, nets, ports, switchPorts, portSwitches, backing);
    }

    /**
     * The {@code backing} object of a configuration file: {@code dirs}, the absolute directories backing files must be
     * under, or block devices allowed themselves (each must exist; an empty list allows no backing file; without it,
     * anywhere), and {@code devices}, whether
     * block devices may be backing files (default false). Without the key: {@link
     * io.iovirt.storage.BackingPolicy#UNRESTRICTED}, QEMU's behaviour.
     */
    static io.iovirt.storage.BackingPolicy backing(Object v, String name) throws RpcException {
        if (v == null) {
            return io.iovirt.storage.BackingPolicy.UNRESTRICTED;
        }
        Params p = new Params(name + ": " + BACKING, object(v, BACKING)).allow(BACKING_PARAMS);
        boolean devices = p.bool("devices", false);
        List<Path> dirs = null;
        if (p.has("dirs")) {
            dirs = new ArrayList<>();
            List<Object> l = list(object(v, BACKING).get("dirs"), BACKING + ".dirs");
            for (int i = 0; i < l.size(); i++) {
                String what = name + ": " + BACKING + ".dirs[" + i + "]";
                if (!(l.get(i) instanceof String s) || s.isEmpty()) {
                    throw RpcException.params(what + " must be a directory's absolute path (a string)");
                }
                Path d;
                try {
                    d = Path.of(s);
                } catch (java.nio.file.InvalidPathException e) {
                    throw RpcException.params(
                            what + " is not a valid path (" + e.getReason() + "): '" + Params.printable(s) + "'");
                }
                if (!d.isAbsolute()) {
                    throw RpcException.params(what + " '" + Params.printable(s)
                            + "' is relative: name the directory by its absolute path");
                }
                dirs.add(d);
            }
        }
        try {
            return io.iovirt.storage.BackingPolicy.of(dirs, devices, true);
        } catch (IOException e) {
            throw RpcException.params(name + ": " + BACKING + ": " + e.getMessage());
        }
    }

    /**
     * A state file's blk entry (the parameters of blk.add): {@code readonly} is how the image was opened (as added);
     * {@code readonly-now: true}, only in a state file and only when blk.set-readonly switched a writable image
     * read-only, has it switched read-only again at start — so that blk.set-readonly false still works then.
     */
    static Map<String, Object> blkEntry(BlkExport.Spec s, boolean readOnlyNow) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", s.id());
        m.put("image", s.image().toString());
        m.put("socket", s.socket().toString());
        m.put("queues", s.queues());
        m.put("readonly", s.readOnly());
        m.put("direct", s.direct());
        m.put("serial", s.serial());
        m.put("io-engine", s.engine().name().toLowerCase(java.util.Locale.ROOT));
        m.put("format", s.format() == null ? "auto" : s.format().toString());
        if (readOnlyNow && !s.readOnly()) {
            m.put(READ_ONLY_NOW, true);
        }
        return m;
    }

    /** An nbd entry of a file (the parameters of nbd.add). */
    static Map<String, Object> nbdEntry(NbdExportEntry.Spec s) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", s.id());
        m.put("image", s.image().toString());
        m.put("socket", s.socket().toString());
        m.put("readonly", s.readOnly());
        m.put("format", s.format() == null ? "auto" : s.format().toString());
        return m;
    }

    /** A net entry of a file (the parameters of net.add) with its {@code ports}. */
    static Map<String, Object> netEntry(NetSwitch.Spec s, List<NetSwitch.PortSpec> ports) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", s.id());
        m.put("mtu", s.mtu());
        m.put("mac-aging", s.macAgingSeconds());
        m.put("macs-per-port", s.macsPerPort());
        m.put("poll-threads", s.pollThreads());
        List<Object> ps = new ArrayList<>();
        for (NetSwitch.PortSpec p : ports) {
            ps.add(portEntry(null, p));
        }
        m.put("ports", ps);
        return m;
    }

    /**
     * An entry of a state file's {@code ports} list: the port's (with its switch's id) and its switch's parameters
     * ({@link #SWITCH}).
     */
    static Map<String, Object> switchPortEntry(NetSwitch.Spec sw, NetSwitch.PortSpec p) {
        Map<String, Object> m = portEntry(sw.id(), p);
        Map<String, Object> s = netEntry(sw, List.of());
        s.remove("id");
        s.remove("ports");
        m.put(SWITCH, s);
        return m;
    }

    /** A port of a file (the parameters of net.port.add; {@code net}: the switch, for the state file's list). */
    static Map<String, Object> portEntry(String net, NetSwitch.PortSpec p) {
        Map<String, Object> m = new LinkedHashMap<>();
        if (net != null) {
            m.put("net", net);
        }
        m.put("id", p.id());
        m.put("kind", p.kind());
        m.put(p.kind().equals("tap") ? "ifname" : "path", p.path());
        if (p.kind().equals("vhost-user")) {
            m.put("queues", p.queues());
            if (p.mac() != -1) {
                m.put("mac", io.iovirt.net.Mac.toString(p.mac()));
            }
        }
        return m;
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

    /** What runs, copied under the daemon's lock: a reload works from it without holding the lock. */
    private record Running(
            List<BlkExport> blks,
            List<NbdExportEntry> nbds,
            Map<String, NetSwitch> nets,
            Map<NetSwitch, List<NetSwitch.PortEntry>> ports) {
        static Running of(Daemon d) {
            return d.locked(() -> {
                Map<NetSwitch, List<NetSwitch.PortEntry>> ports = new LinkedHashMap<>();
                for (NetSwitch n : d.netsLocked().values()) {
                    ports.put(n, List.copyOf(n.ports.values()));
                }
                return new Running(
                        List.copyOf(d.blksLocked().values()),
                        List.copyOf(d.nbdsLocked().values()),
                        new LinkedHashMap<>(d.netsLocked()),
                        ports);
            });
        }

        /** True when the API (not the file) has a device with this id. */
        boolean apiHas(String id) {
            return blks.stream().anyMatch(e -> e.spec.id().equals(id) && !e.fromConfig)
                    || nbds.stream().anyMatch(e -> e.spec.id().equals(id) && !e.fromConfig)
                    || nets.containsKey(id) && !nets.get(id).fromConfig;
        }
    }

    /**
     * Makes the running configuration-file devices match {@code want}: removes those no longer listed, replaces
     * changed ones (a disk's read-only state alone is switched in place when its image was opened writable), adds
     * new ones. One entry failing does not stop the others. It holds the daemon's lock only to look at what runs:
     * every add and remove is the daemon's own (which opens and closes outside the lock), so the API and /metrics
     * are served while a reload waits on a slow image or frontend; each acts only on the device the reload saw, and
     * one the API replaced meanwhile is reported.
     */
    static Outcome apply(Daemon d, Desired want) {
        List<String> added = new ArrayList<>();
        List<String> removed = new ArrayList<>();
        List<String> changed = new ArrayList<>();
        List<String> failed = new ArrayList<>();
        // daemon-wide, before any open below: the images this apply opens (new or changed entries) take the file's
        // policy; those already open keep their chains (their files are open; the next open of each is checked)
        if (want.backing() != null && !want.backing().equals(d.backing())) {
            d.backing(want.backing());
            changed.add(BACKING);
            LOG.log(
                    System.Logger.Level.INFO,
                    "backing files of images opened from now on: "
                            + (want.backing().unrestricted()
                                    ? "unrestricted"
                                    : "under " + want.backing().describe()
                                            + (want.backing().devices() ? ", block devices allowed" : "")));
        }
        Running now = Running.of(d);
        // blk: the disks switched read-only or writable in place, each on its own thread (a switch waits up to
        // BlkDevice's share limit for its disk's writes and write-back: N stuck disks would hold the reload N times)
        List<Switch> inPlace = new ArrayList<>();
        for (BlkExport e : now.blks()) {
            BlkExport.Spec w = want.blks().get(e.spec.id());
            if (!e.fromConfig) {
                continue;
            }
            if (w == null) {
                if (run(failed, "blk " + e.spec.id(), () -> d.removeBlk(e.spec.id(), e))) {
                    removed.add("blk " + e.spec.id());
                }
            } else {
                // compared with what runs: blk.set-readonly or an earlier reload may have switched read-only in place
                boolean ro = e.image.readOnly();
                if (w.equals(e.spec.withReadOnly(ro))) {
                    continue;
                }
                if (w.withReadOnly(ro).equals(e.spec.withReadOnly(ro)) && (w.readOnly() || !e.spec.readOnly())) {
                    // only read-only differs, and the image was opened writable: switched in place
                    inPlace.add(Switch.start(e, w.readOnly()));
                } else {
                    // anything else, or writable for an image opened read-only: reopened (the frontend reconnects)
                    run(failed, "blk " + w.id(), () -> {
                        d.removeBlk(w.id(), e);
                        d.addBlk(w, true);
                    });
                }
                changed.add("blk " + w.id());
            }
        }
        for (BlkExport.Spec w : want.blks().values()) {
            if (now.apiHas(w.id())) {
                failed.add("blk " + w.id() + ": the id is in use by a device added through the API");
            } else if (now.blks().stream().noneMatch(e -> e.spec.id().equals(w.id()))) {
                if (run(failed, "blk " + w.id(), () -> d.addBlk(w, true))) {
                    added.add("blk " + w.id());
                }
            }
        }
        long switchDeadline = System.nanoTime() + SWITCH_WAIT.toNanos();
        for (Switch sw : inPlace) {
            sw.await(failed, switchDeadline);
        }
        // nbd: a changed entry is replaced (its clients reconnect, as QEMU's NBD client does)
        for (NbdExportEntry e : now.nbds()) {
            if (!e.fromConfig) {
                continue;
            }
            NbdExportEntry.Spec w = want.nbds().get(e.spec.id());
            if (w == null) {
                if (run(failed, "nbd " + e.spec.id(), () -> d.removeNbd(e.spec.id(), e))) {
                    removed.add("nbd " + e.spec.id());
                }
            } else if (!w.equals(e.spec)) {
                run(failed, "nbd " + w.id(), () -> {
                    d.removeNbd(w.id(), e);
                    d.addNbd(w, true);
                });
                changed.add("nbd " + w.id());
            }
        }
        for (NbdExportEntry.Spec w : want.nbds().values()) {
            if (now.apiHas(w.id())) {
                failed.add("nbd " + w.id() + ": the id is in use by a device added through the API");
            } else if (now.nbds().stream().noneMatch(e -> e.spec.id().equals(w.id()))) {
                if (run(failed, "nbd " + w.id(), () -> d.addNbd(w, true))) {
                    added.add("nbd " + w.id());
                }
            }
        }
        // net: a switch that leaves the file or changes is removed (to be recreated with its ports) — not one with
        // ports added through the API (removeNet refuses): it stays as it runs, and its file ports follow the file
        Map<String, NetSwitch> kept = new LinkedHashMap<>(); // the file's switches that stay as they run
        for (NetSwitch n : now.nets().values()) {
            if (!n.fromConfig) {
                continue;
            }
            NetSwitch.Spec w = want.nets().get(n.spec.id());
            if (w == null) {
                if (run(failed, "net " + n.spec.id(), () -> d.removeNet(n.spec.id(), n))) {
                    removed.add("net " + n.spec.id());
                } else {
                    kept.put(n.spec.id(), n);
                }
            } else if (!w.equals(n.spec)) {
                if (run(failed, "net " + w.id(), () -> d.removeNet(w.id(), n))) {
                    changed.add("net " + w.id());
                } else {
                    kept.put(n.spec.id(), n);
                }
            } else {
                kept.put(n.spec.id(), n);
            }
        }
        List<NetSwitch.Spec> switches = new ArrayList<>(want.nets().values());
        for (NetSwitch n : kept.values()) {
            if (!want.nets().containsKey(n.spec.id())) {
                switches.add(n.spec); // gone from the file but kept: its file ports go
            }
        }
        for (NetSwitch.Spec w : switches) {
            NetSwitch sw = kept.get(w.id());
            List<NetSwitch.PortEntry> running =
                    sw == null ? List.of() : now.ports().get(sw);
            if (sw == null) {
                if (now.apiHas(w.id())) {
                    failed.add("net " + w.id() + ": the id is in use by a device added through the API");
                    continue;
                }
                NetSwitch[] made = new NetSwitch[1];
                if (!run(failed, "net " + w.id(), () -> made[0] = d.addNet(w, true))) {
                    continue;
                }
                sw = made[0];
                if (!changed.contains("net " + w.id())) {
                    added.add("net " + w.id());
                }
            }
            NetSwitch n = sw;
            Map<String, NetSwitch.PortSpec> wantPorts = want.ports().getOrDefault(w.id(), Map.of());
            List<String> present = new ArrayList<>();
            for (NetSwitch.PortEntry pe : running) {
                String what = "port " + w.id() + "/" + pe.spec().id();
                NetSwitch.PortSpec wp = wantPorts.get(pe.spec().id());
                if (pe.fromConfig() && (wp == null || !wp.equals(pe.spec()))) {
                    if (run(failed, what, () -> d.removePort(n, pe.spec().id(), pe))) {
                        (wp == null ? removed : changed).add(what);
                        continue;
                    }
                }
                present.add(pe.spec().id());
            }
            for (NetSwitch.PortSpec wp : wantPorts.values()) {
                String what = "port " + w.id() + "/" + wp.id();
                if (!present.contains(wp.id())
                        && run(failed, what, () -> d.addPort(n, wp, true))
                        && !changed.contains(what)) {
                    added.add(what);
                }
            }
        }
        Outcome o = new Outcome(added, removed, changed, failed);
        LOG.log(
                failed.isEmpty() ? System.Logger.Level.INFO : System.Logger.Level.WARNING,
                "configuration applied: " + o);
        return o;
    }

    interface Action {
        void run() throws RpcException;
    }

    /**
     * How long a reload waits for its disks' switches in place, all together: BlkDevice's share limit (5 s) and some.
     * A switch can take longer than that limit: one to writable waits for an earlier switch's write-back still under
     * way (a file system that does not answer), a qcow2 image's switch to read-only for its tables' write-back. The
     * reload waited for such a switch for as long as it took, if ever: a SIGHUP reload, applied by the thread that
     * also takes SIGTERM, left the daemon deaf to SIGTERM.
     */
    static final java.time.Duration SWITCH_WAIT = java.time.Duration.ofSeconds(10);

    /**
     * The switches still under way that a reload stopped waiting for, by disk: a later reload starts no second one
     * for the same disk (its thread would only queue behind the first, one more per reload).
     */
    private static final Map<BlkExport, CompletableFuture<String>> LATE_SWITCHES =
            new java.util.concurrent.ConcurrentHashMap<>();

    /**
     * A disk's switch to read-only or writable in place, under way on a thread of its own, so that the switches of
     * one reload wait for their disks at the same time: the reload waits about as long as the slowest one (up to
     * BlkDevice's share limit, 5 s, each), not the sum of them, and {@link #SWITCH_WAIT} at most.
     */
    private record Switch(BlkExport export, boolean readOnly, CompletableFuture<String> outcome) {
        static Switch start(BlkExport e, boolean readOnly) {
            CompletableFuture<String> f = new CompletableFuture<>();
            if (LATE_SWITCHES.containsKey(e)) {
                f.completeExceptionally(new IOException("a switch an earlier reload asked for is still under way"
                        + " (its image's file system does not answer?): not switched again; reload once it has"
                        + " ended (logged), and see blk.list"));
                return new Switch(e, readOnly, f);
            }
            try {
                Thread.ofPlatform()
                        .name("reload blk " + e.spec.id() + (readOnly ? " read-only" : " writable"))
                        .daemon()
                        .start(() -> {
                            try {
                                f.complete(e.device.setReadOnly(readOnly));
                            } catch (IOException | RuntimeException | Error ex) {
                                f.completeExceptionally(ex);
                            }
                        });
            } catch (RuntimeException | OutOfMemoryError ex) { // no thread: the disk is as it was
                f.completeExceptionally(
                        new IOException("cannot start the thread that switches the disk (nothing changed): " + ex, ex));
            }
            return new Switch(e, readOnly, f);
        }

        /**
         * Waits for the switch's end, until {@code deadline} (System.nanoTime) at most; logs its outcome by the disk's
         * name, a failure added to {@code failed}. One still under way then is reported as failed, and goes on: its
         * outcome is logged when it ends.
         */
        void await(List<String> failed, long deadline) {
            String what = "blk " + export.spec.id();
            String lockPending;
            try {
                lockPending = outcome.get(Math.max(0, deadline - System.nanoTime()), TimeUnit.NANOSECONDS);
            } catch (TimeoutException ex) {
                String to = readOnly ? "read-only" : "writable";
                failed.add(what + ": still switching " + to + " after " + SWITCH_WAIT.toSeconds() + " s (its image's"
                        + " file system does not answer?); it goes on, and a log line tells its end; see blk.list");
                LATE_SWITCHES.put(export, outcome);
                outcome.whenComplete((r, err) -> {
                    LATE_SWITCHES.remove(export, outcome);
                    LOG.log(
                            err == null ? System.Logger.Level.INFO : System.Logger.Level.WARNING,
                            what + ": " + (err == null ? "switched " : "not switched ") + to + " by an earlier"
                                    + " reload, which stopped waiting for it"
                                    + (err != null ? ": " + err.getMessage() : r == null ? "" : "; " + r));
                });
                return;
            } catch (ExecutionException ex) {
                Throwable c = ex.getCause();
                failed.add(what + ": " + c.getMessage());
                LOG.log(
                        System.Logger.Level.WARNING,
                        what + ": not switched " + (readOnly ? "read-only" : "writable") + " by the reload: "
                                + c.getMessage());
                return;
            } catch (InterruptedException ex) {
                Thread.currentThread().interrupt();
                failed.add(what + ": the reload was interrupted while the disk switched; blk.list shows its state");
                return;
            }
            if (!readOnly && lockPending != null) { // still read-only: the image busy, writable by itself later
                failed.add(what + ": still switching writable: " + lockPending);
                LOG.log(System.Logger.Level.WARNING, what + ": still switching writable by the reload: " + lockPending);
                return;
            }
            LOG.log(
                    System.Logger.Level.INFO,
                    what + ": switched " + (readOnly ? "read-only" : "writable") + " by the reload"
                            + (lockPending == null ? "" : "; " + lockPending));
        }
    }

    /** Runs one entry's action; a failure is added to {@code failed} with its reason (the other entries go on). */
    static boolean run(List<String> failed, String what, Action a) {
        try {
            a.run();
            return true;
        } catch (RpcException | RuntimeException e) {
            failed.add(what + ": " + e.getMessage());
            return false;
        }
    }
}
