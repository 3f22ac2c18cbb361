// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.blk.BlkStats;
import io.iovirt.devices.net.VirtioNetPort;
import io.iovirt.net.Mac;
import io.iovirt.net.MacTable;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.virtio.QueueWorker;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The devices one {@code iovirt daemon} hosts, and the control API's methods on them. Control requests are
 * serialized by this object's lock; the data paths never take it (each device has its own threads). A request that
 * fails leaves everything as it was and gets an {@link RpcException} that says what to do.
 */
public final class Daemon implements AutoCloseable {
    public static final String VERSION = "0.1.0";
    /** The control API's version: bumped when a method changes incompatibly. */
    public static final int API_VERSION = 1;

    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");

    private final Object lock = new Object();
    private final Map<String, BlkExport> blks = new LinkedHashMap<>(); // guarded by lock
    private final Map<String, NetSwitch> nets = new LinkedHashMap<>(); // guarded by lock
    private final Map<String, NbdExportEntry> nbds = new LinkedHashMap<>(); // guarded by lock
    private final io.iovirt.linux.SocketAccess access;
    private final long startMillis = System.currentTimeMillis();
    private int nextBlk;
    private int nextNet;
    private int nextPort;
    private int nextNbd;
    private boolean closed;

    public Daemon(String socketGroup) throws IOException {
        this(socketGroup, java.util.Set.of());
    }

    /**
     * @param socketGroup device sockets are 0660 and owned by this group (null: 0600)
     * @param allowUids   peer uids served besides the daemon's own and root (QEMU's user when it runs as another)
     */
    public Daemon(String socketGroup, java.util.Set<Integer> allowUids) throws IOException {
        if (socketGroup != null) {
            try {
                java.nio.file.FileSystems.getDefault()
                        .getUserPrincipalLookupService()
                        .lookupPrincipalByGroupName(socketGroup);
            } catch (java.nio.file.attribute.UserPrincipalNotFoundException e) {
                throw new IOException(
                        "--socket-group " + socketGroup + ": no such group; create it (groupadd " + socketGroup
                                + ") and add QEMU's user to it",
                        e);
            }
        }
        this.access = io.iovirt.linux.SocketAccess.of(socketGroup, allowUids);
    }

    io.iovirt.linux.SocketAccess access() {
        return access;
    }

    // ---- dispatch -----------------------------------------------------------------------------------------------

    /** The methods, for the documentation test and {@code ctl} help. */
    public static final List<String> METHODS = List.of(
            "version",
            "blk.add",
            "blk.remove",
            "blk.list",
            "blk.info",
            "blk.resize",
            "blk.set-readonly",
            "net.add",
            "net.remove",
            "net.port.add",
            "net.port.remove",
            "net.list",
            "net.macs",
            "nbd.add",
            "nbd.remove",
            "nbd.list",
            "stats",
            "libvirt-xml",
            "reload");

    /** Executes one control request. Never throws anything but {@link RpcException} for a bad or failed request. */
    public Object call(String method, Map<String, Object> params) throws RpcException {
        Params p = new Params(method, params);
        return switch (method) {
            case "version" -> version(p.allow());
            case "blk.add" ->
                blkAdd(
                        p.allow(
                                "id",
                                "image",
                                "socket",
                                "queues",
                                "readonly",
                                "direct",
                                "serial",
                                "io-engine",
                                "format"),
                        false);
            case "blk.remove" -> blkRemove(p.allow("id"));
            case "blk.list" -> blkList(p.allow());
            case "blk.info" -> blkInfo(p.allow("id"));
            case "blk.resize" -> blkResize(p.allow("id", "size"));
            case "blk.set-readonly" -> blkSetReadOnly(p.allow("id", "readonly"));
            case "net.add" -> netAdd(p.allow("id", "mtu", "mac-aging", "macs-per-port", "poll-threads"), false);
            case "net.remove" -> netRemove(p.allow("id"));
            case "net.port.add" -> portAdd(p.allow("net", "id", "kind", "path", "ifname", "queues", "mac"), false);
            case "net.port.remove" -> portRemove(p.allow("net", "id"));
            case "net.list" -> netList(p.allow());
            case "net.macs" -> netMacs(p.allow("net"));
            case "nbd.add" -> nbdAdd(p.allow("id", "image", "socket", "readonly", "format"));
            case "nbd.remove" -> nbdRemove(p.allow("id"));
            case "nbd.list" -> nbdList(p.allow());
            case "stats" -> stats(p.allow("id"));
            case "libvirt-xml" ->
                LibvirtXml.forDevice(this, p.allow("id", "memory", "name", "kernel", "initrd", "cmdline", "console"));
            case "reload" -> reload(p.allow());
            default ->
                throw new RpcException(
                        RpcException.METHOD_NOT_FOUND,
                        "no method '" + Params.printable(method) + "' (methods: " + String.join(", ", METHODS) + ")");
        };
    }

    /** What the control API's reload runs (set by {@link DaemonService}; none: the method is refused). */
    interface Reloader {
        ConfigFile.Outcome reload() throws RpcException;
    }

    private volatile Reloader reloader;

    void reloader(Reloader r) {
        this.reloader = r;
    }

    /** Not under the lock: applying the file takes it, and a reload may run on another thread (SIGHUP). */
    private Map<String, Object> reload(Params p) throws RpcException {
        Reloader r = reloader;
        if (r == null) {
            throw new RpcException(RpcException.FAILED, "this daemon has no configuration file to re-read");
        }
        ConfigFile.Outcome out = r.reload();
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("added", out.added());
        m.put("removed", out.removed());
        m.put("changed", out.changed());
        return m;
    }

    private Map<String, Object> version(Params p) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("version", VERSION);
        m.put("api", API_VERSION);
        m.put("pid", ProcessHandle.current().pid());
        m.put("uptime_seconds", (System.currentTimeMillis() - startMillis) / 1000);
        m.put("methods", METHODS);
        return m;
    }

    // ---- blk ----------------------------------------------------------------------------------------------------

    BlkExport.Spec blkSpec(Params p, String defaultId) throws RpcException {
        String id = p.id("id", defaultId);
        Path image = p.path("image");
        Path socket = p.path("socket");
        int queues = (int) p.integer("queues", 1, 1, 64);
        boolean ro = p.bool("readonly", false);
        boolean direct = p.bool("direct", false);
        String serial = p.string("serial", id.length() <= 20 ? id : id.substring(0, 20));
        if (serial.length() > 20 || !serial.chars().allMatch(c -> c >= 0x20 && c < 0x7f)) {
            throw RpcException.params("blk.add: 'serial' must be at most 20 printable ASCII characters");
        }
        BlkDevice.IoEngine engine = switch (p.string("io-engine", "auto")) {
            case "auto" -> BlkDevice.IoEngine.AUTO;
            case "sync" -> BlkDevice.IoEngine.SYNC;
            case "io_uring" -> BlkDevice.IoEngine.IO_URING;
            default -> throw RpcException.params("blk.add: 'io-engine' must be auto, sync or io_uring");
        };
        io.iovirt.storage.ImageFormat format;
        try {
            format = p.has("format") && !p.string("format").equals("auto")
                    ? io.iovirt.storage.ImageFormat.parse(p.string("format"))
                    : null;
        } catch (IllegalArgumentException e) {
            throw RpcException.params("blk.add: " + e.getMessage() + " (or auto: detect from the header)");
        }
        return new BlkExport.Spec(id, image, socket, queues, ro, direct, serial, engine, format);
    }

    private Map<String, Object> blkAdd(Params p, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            BlkExport.Spec spec = blkSpec(p, nextId("blk", blks));
            return Map.of("id", addBlk(spec, fromConfig).spec.id());
        }
    }

    BlkExport addBlk(BlkExport.Spec spec, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            checkOpen();
            requireFree(spec.id());
            for (BlkExport e : blks.values()) {
                if (e.spec.socket().equals(spec.socket())) {
                    throw new RpcException(
                            RpcException.EXISTS,
                            "socket " + spec.socket() + " is already served by blk '" + e.spec.id() + "'");
                }
            }
            requireImageFree(spec.image(), spec.readOnly());
            BlkExport e;
            try {
                e = BlkExport.start(spec, fromConfig, access);
            } catch (IOException | RuntimeException ex) {
                throw new RpcException(RpcException.FAILED, "blk.add " + spec.id() + ": " + ex.getMessage());
            }
            blks.put(spec.id(), e);
            LOG.log(
                    System.Logger.Level.INFO,
                    "blk " + spec.id() + ": serving " + spec.image() + " on " + spec.socket() + " ("
                            + e.device.ioDescription() + ")");
            return e;
        }
    }

    private Map<String, Object> blkRemove(Params p) throws RpcException {
        String id = p.id("id");
        removeBlk(id);
        return Map.of("id", id, "removed", true);
    }

    void removeBlk(String id) throws RpcException {
        BlkExport e;
        synchronized (lock) {
            e = blk(id);
            blks.remove(id);
            e.close(); // under the lock: a blk.add of the same socket must not race the shutdown
        }
        LOG.log(System.Logger.Level.INFO, "blk " + id + ": removed");
    }

    private BlkExport blk(String id) throws RpcException {
        synchronized (lock) {
            return existing(blks, id, "disk", "disks", "blk.add");
        }
    }

    private List<Object> blkList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (BlkExport e : blks.values()) {
                out.add(blkSummary(e));
            }
            return out;
        }
    }

    private static Map<String, Object> blkSummary(BlkExport e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec.id());
        m.put("image", e.spec.image().toString());
        m.put("socket", e.spec.socket().toString());
        m.put("format", e.image.format());
        m.put("size", e.image.size());
        m.put("queues", e.spec.queues());
        m.put("readonly", e.image.readOnly());
        m.put("direct", e.spec.direct());
        m.put("connected", e.server.connected());
        m.put("frontend_pid", e.server.frontendPid());
        return m;
    }

    private Map<String, Object> blkInfo(Params p) throws RpcException {
        BlkExport e = blk(p.id("id"));
        Map<String, Object> m = blkSummary(e);
        m.put("serial", e.spec.serial());
        m.put("io", e.device.ioDescription());
        m.put("features_offered", hex(e.device.features()));
        m.put("features_acked", hex(e.device.ackedFeatures()));
        m.put("running_queues", e.device.runningQueues());
        m.put("origin", e.fromConfig ? "config" : "api");
        m.put("counters", blkCounters(e.device.stats()));
        return m;
    }

    private static String hex(long v) {
        return "0x" + HexFormat.of().toHexDigits(v).replaceFirst("^0+(?=.)", "");
    }

    private Map<String, Object> blkResize(Params p) throws RpcException {
        BlkExport e = blk(p.id("id"));
        long size = p.size("size");
        if (size < 512) {
            throw RpcException.params("blk.resize: size must be at least 512 bytes");
        }
        BlkDevice.ResizeResult r;
        try {
            r = e.device.resize(size); // not under the daemon's lock: a slow frontend delays only this request
        } catch (IOException ex) {
            throw new RpcException(RpcException.FAILED, "blk.resize " + e.spec.id() + ": " + ex.getMessage());
        }
        LOG.log(
                System.Logger.Level.INFO,
                "blk " + e.spec.id() + ": resized " + r.oldSize() + " -> " + r.newSize() + " bytes; " + r.notice());
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec.id());
        m.put("old_size", r.oldSize());
        m.put("size", r.newSize());
        m.put("frontend_notified", r.frontendNotified());
        m.put("notice", r.notice());
        return m;
    }

    private Map<String, Object> blkSetReadOnly(Params p) throws RpcException {
        BlkExport e = blk(p.id("id"));
        if (!p.has("readonly")) {
            throw RpcException.params("blk.set-readonly: missing parameter 'readonly' (true or false)");
        }
        boolean ro = p.bool("readonly", true);
        try {
            e.device.setReadOnly(ro);
        } catch (IOException ex) {
            throw new RpcException(RpcException.FAILED, "blk.set-readonly " + e.spec.id() + ": " + ex.getMessage());
        }
        return Map.of(
                "id",
                e.spec.id(),
                "readonly",
                ro,
                "notice",
                "writes are " + (ro ? "refused" : "accepted") + " from now on; the guest's driver sees the"
                        + " read-only flag change after its next reset");
    }

    // ---- nbd ----------------------------------------------------------------------------------------------------

    private Map<String, Object> nbdAdd(Params p) throws RpcException {
        synchronized (lock) {
            checkOpen();
            NbdExportEntry.Spec spec = nbdSpec(p, nextId("nbd", nbds));
            addNbd(spec, false);
            return Map.of("id", spec.id());
        }
    }

    /** The parameters of nbd.add (and of a configuration file's nbd entry) as a spec; nothing is opened yet. */
    NbdExportEntry.Spec nbdSpec(Params p, String defaultId) throws RpcException {
        String id = defaultId == null ? p.id("id") : p.id("id", defaultId);
        Path image = p.path("image");
        Path socket = p.path("socket");
        io.iovirt.storage.ImageFormat format;
        try {
            format = p.has("format") && !p.string("format").equals("auto")
                    ? io.iovirt.storage.ImageFormat.parse(p.string("format"))
                    : null;
        } catch (IllegalArgumentException e) {
            throw RpcException.params("nbd.add: " + e.getMessage() + " (or auto)");
        }
        return new NbdExportEntry.Spec(id, image, socket, p.bool("readonly", false), format);
    }

    /** Starts an NBD export (lock held): its image opened, its own server listening on its socket. */
    void addNbd(NbdExportEntry.Spec spec, boolean fromConfig) throws RpcException {
        String id = spec.id();
        requireFree(id);
        for (NbdExportEntry e : nbds.values()) {
            if (e.spec.socket().equals(spec.socket())) {
                throw new RpcException(
                        RpcException.EXISTS,
                        "socket " + spec.socket() + " is already served by nbd '" + e.spec.id() + "'");
            }
        }
        for (BlkExport b : blks.values()) {
            if (b.spec.socket().equals(spec.socket())) {
                throw new RpcException(
                        RpcException.EXISTS,
                        "socket " + spec.socket() + " is already served by blk '" + b.spec.id() + "'");
            }
        }
        requireImageFree(spec.image(), spec.readOnly());
        NbdExportEntry e;
        try {
            e = NbdExportEntry.start(spec, access, fromConfig);
        } catch (IOException | RuntimeException ex) {
            throw new RpcException(RpcException.FAILED, "nbd " + id + ": " + ex.getMessage());
        }
        nbds.put(id, e);
        LOG.log(
                System.Logger.Level.INFO,
                "nbd " + id + ": exporting " + spec.image() + " on " + spec.socket()
                        + (fromConfig ? " (configuration file)" : ""));
    }

    private Map<String, Object> nbdRemove(Params p) throws RpcException {
        String id = p.id("id");
        removeNbd(id);
        return Map.of("id", id, "removed", true);
    }

    /** Stops an NBD export: its clients are disconnected (their requests in flight complete), its image closed. */
    void removeNbd(String id) throws RpcException {
        synchronized (lock) {
            NbdExportEntry e = existing(nbds, id, "NBD export", "exports", "nbd.add");
            nbds.remove(id);
            e.close();
        }
    }

    private List<Object> nbdList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (NbdExportEntry e : nbds.values()) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("id", e.spec.id());
                m.put("image", e.spec.image().toString());
                m.put("socket", e.spec.socket().toString());
                m.put("format", e.image.format());
                m.put("size", e.image.size());
                m.put("readonly", e.spec.readOnly());
                m.put("connections", e.server.connectionCount());
                out.add(m);
            }
            return out;
        }
    }

    private static Map<String, Object> nbdStats(NbdExportEntry e) {
        io.iovirt.nbd.NbdExportStats s = e.export.stats();
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec.id());
        m.put("kind", "nbd");
        m.putAll(nbdCounters(s));
        return m;
    }

    /** An NBD export's counters, the schema of {@code ctl} and of {@code serve nbd}'s JSON statistics lines. */
    public static Map<String, Object> nbdCounters(io.iovirt.nbd.NbdExportStats s) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("connections", s.connections.get());
        m.put("reads", s.reads.sum());
        m.put("writes", s.writes.sum());
        m.put("flushes", s.flushes.sum());
        m.put("trims", s.trims.sum());
        m.put("write_zeroes", s.writeZeroes.sum());
        m.put("bytes_read", s.bytesRead.sum());
        m.put("bytes_written", s.bytesWritten.sum());
        m.put("errors", s.errors.sum());
        return m;
    }

    List<NbdExportEntry> nbdExports() {
        synchronized (lock) {
            return List.copyOf(nbds.values());
        }
    }

    /**
     * Refuses a second export of an image (blk or NBD, lock held) unless both are read-only: a second writer would
     * corrupt it, and a reader would see it torn. Another process's exports are refused by the image lock instead
     * (a writable NBD export takes it at once, a blk export when its frontend starts).
     */
    private void requireImageFree(Path image, boolean readOnly) throws RpcException {
        for (BlkExport b : blks.values()) {
            requireImageFree(image, readOnly, b.spec.image(), b.spec.readOnly(), "blk '" + b.spec.id() + "'");
        }
        for (NbdExportEntry n : nbds.values()) {
            requireImageFree(image, readOnly, n.spec.image(), n.spec.readOnly(), "nbd '" + n.spec.id() + "'");
        }
    }

    private static void requireImageFree(Path image, boolean readOnly, Path other, boolean otherReadOnly, String by)
            throws RpcException {
        if (other.equals(image) && !(otherReadOnly && readOnly)) {
            throw new RpcException(
                    RpcException.EXISTS,
                    "image " + image + " is already exported by " + by
                            + "; two writers would corrupt it (export it read-only twice, or not at all)");
        }
    }

    private boolean taken(String id) {
        return blks.containsKey(id) || nets.containsKey(id) || nbds.containsKey(id);
    }

    /** Refuses an id a disk, NBD export or switch already has (ids name all three in one space). */
    private void requireFree(String id) throws RpcException {
        if (taken(id)) {
            throw new RpcException(
                    RpcException.EXISTS, "id '" + id + "' is already in use; choose another id or remove it first");
        }
    }

    /**
     * The entry {@code id} of {@code map}; otherwise NOT_FOUND, naming the entries there are or the method that adds
     * one ({@code what}: "disk", {@code plural}: "disks", {@code add}: "blk.add").
     */
    private static <T> T existing(Map<String, T> map, String id, String what, String plural, String add)
            throws RpcException {
        T e = map.get(id);
        if (e == null) {
            throw new RpcException(
                    RpcException.NOT_FOUND,
                    "no " + what + " '" + Params.printable(id) + "'"
                            + (map.isEmpty()
                                    ? " (there are none; add one with " + add + ")"
                                    : " (" + plural + ": " + String.join(", ", map.keySet()) + ")"));
        }
        return e;
    }

    // ---- net ----------------------------------------------------------------------------------------------------

    NetSwitch.Spec netSpec(Params p, String defaultId) throws RpcException {
        return new NetSwitch.Spec(
                p.id("id", defaultId),
                (int) p.integer("mtu", 1500, 68, 65535),
                (int) p.integer("mac-aging", io.iovirt.net.Switch.DEFAULT_MAC_AGING_SECONDS, 1, 86400),
                (int) p.integer(
                        "macs-per-port",
                        io.iovirt.net.Switch.DEFAULT_MACS_PER_PORT,
                        1,
                        io.iovirt.net.Switch.DEFAULT_MAC_CAPACITY),
                (int) p.integer("poll-threads", 0, 0, io.iovirt.virtio.WorkerGroup.MAX_THREADS));
    }

    private Map<String, Object> netAdd(Params p, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            return Map.of(
                    "id",
                    addNet(netSpec(p, nextId("net", nets)), fromConfig).spec.id());
        }
    }

    NetSwitch addNet(NetSwitch.Spec spec, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            checkOpen();
            requireFree(spec.id());
            NetSwitch n;
            try {
                n = new NetSwitch(spec, fromConfig);
            } catch (RuntimeException | io.iovirt.linux.LinuxException ex) {
                throw new RpcException(RpcException.FAILED, "net.add " + spec.id() + ": " + ex.getMessage());
            }
            nets.put(spec.id(), n);
            LOG.log(System.Logger.Level.INFO, "net " + spec.id() + ": switch added (MTU " + spec.mtu() + ")");
            return n;
        }
    }

    private Map<String, Object> netRemove(Params p) throws RpcException {
        String id = p.id("id");
        removeNet(id);
        return Map.of("id", id, "removed", true);
    }

    void removeNet(String id) throws RpcException {
        synchronized (lock) {
            NetSwitch n = net(id);
            nets.remove(id);
            n.close();
        }
        LOG.log(System.Logger.Level.INFO, "net " + id + ": removed");
    }

    private NetSwitch net(String id) throws RpcException {
        synchronized (lock) {
            return existing(nets, id, "switch", "switches", "net.add");
        }
    }

    NetSwitch.PortSpec portSpec(Params p, String defaultId) throws RpcException {
        String id = p.id("id", defaultId);
        String kind = p.string("kind");
        String path;
        switch (kind) {
            case "vhost-user", "stream" -> {
                if (p.has("ifname")) {
                    throw RpcException.params("net.port.add: a " + kind + " port takes path=, not ifname=");
                }
                path = p.path("path").toString();
            }
            case "tap" -> {
                if (p.has("path")) {
                    throw RpcException.params("net.port.add: a tap port takes ifname=, not path=");
                }
                path = p.string("ifname");
                if (path.length() > 15 || !path.matches("[A-Za-z0-9_.-]+")) {
                    throw RpcException.params("net.port.add: ifname must be 1-15 letters, digits, '_', '.' or '-'");
                }
            }
            default ->
                throw RpcException.params(
                        "net.port.add: kind must be vhost-user, stream or tap, not '" + Params.printable(kind) + "'");
        }
        int queues = (int) p.integer("queues", 1, 1, 128);
        if (queues != 1 && !kind.equals("vhost-user")) {
            throw RpcException.params("net.port.add: queues= applies to vhost-user ports only");
        }
        long mac = -1;
        if (p.has("mac")) {
            if (!kind.equals("vhost-user")) {
                throw RpcException.params("net.port.add: mac= applies to vhost-user ports only");
            }
            try {
                mac = Mac.parse(p.string("mac"));
            } catch (IllegalArgumentException e) {
                throw RpcException.params("net.port.add: " + e.getMessage());
            }
            if (!Mac.isValidSource(mac)) {
                throw RpcException.params("net.port.add: mac must be a unicast address");
            }
        }
        return new NetSwitch.PortSpec(id, kind, path, queues, mac);
    }

    private Map<String, Object> portAdd(Params p, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            NetSwitch n = net(p.id("net"));
            NetSwitch.PortSpec ps = portSpec(p, nextPortId(n));
            addPort(n, ps, fromConfig);
            return Map.of("net", n.spec.id(), "id", ps.id());
        }
    }

    void addPort(NetSwitch n, NetSwitch.PortSpec ps, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            checkOpen();
            if (n.ports.containsKey(ps.id())) {
                throw new RpcException(
                        RpcException.EXISTS, "switch '" + n.spec.id() + "' already has a port '" + ps.id() + "'");
            }
            if (!ps.kind().equals("tap")) {
                for (NetSwitch other : nets.values()) {
                    for (NetSwitch.PortEntry e : other.ports.values()) {
                        if (e.spec().path().equals(ps.path())) {
                            throw new RpcException(
                                    RpcException.EXISTS,
                                    "socket " + ps.path() + " is already port '"
                                            + e.spec().id() + "' of switch '" + other.spec.id() + "'");
                        }
                    }
                }
                for (BlkExport b : blks.values()) {
                    if (b.spec.socket().toString().equals(ps.path())) {
                        throw new RpcException(
                                RpcException.EXISTS,
                                "socket " + ps.path() + " is already served by blk '" + b.spec.id() + "'");
                    }
                }
            }
            try {
                n.addPort(ps, fromConfig, access);
            } catch (IOException | RuntimeException ex) {
                throw new RpcException(
                        RpcException.FAILED, "net.port.add " + n.spec.id() + "/" + ps.id() + ": " + ex.getMessage());
            }
            LOG.log(
                    System.Logger.Level.INFO,
                    "net " + n.spec.id() + ": port " + ps.id() + " (" + ps.kind() + " " + ps.path() + ") added");
        }
    }

    private Map<String, Object> portRemove(Params p) throws RpcException {
        synchronized (lock) {
            NetSwitch n = net(p.id("net"));
            String id = p.id("id");
            if (!n.ports.containsKey(id)) {
                throw new RpcException(
                        RpcException.NOT_FOUND,
                        "switch '" + n.spec.id() + "' has no port '" + Params.printable(id) + "' (ports: "
                                + String.join(", ", n.ports.keySet()) + ")");
            }
            n.removePort(id);
            LOG.log(System.Logger.Level.INFO, "net " + n.spec.id() + ": port " + id + " removed");
            return Map.of("net", n.spec.id(), "id", id, "removed", true);
        }
    }

    private String nextPortId(NetSwitch n) {
        String id;
        do {
            id = "port" + nextPort++;
        } while (n.ports.containsKey(id));
        return id;
    }

    private List<Object> netList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (NetSwitch n : nets.values()) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("id", n.spec.id());
                m.put("mtu", n.spec.mtu());
                m.put("mac_aging", n.spec.macAgingSeconds());
                m.put("macs_per_port", n.spec.macsPerPort());
                m.put("poll_threads", n.spec.pollThreads());
                m.put("macs", n.sw.macTable().size());
                List<Object> ports = new ArrayList<>();
                for (NetSwitch.PortEntry e : n.ports.values()) {
                    ports.add(portSummary(e));
                }
                m.put("ports", ports);
                out.add(m);
            }
            return out;
        }
    }

    private static Map<String, Object> portSummary(NetSwitch.PortEntry e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec().id());
        m.put("kind", e.spec().kind());
        m.put(e.spec().kind().equals("tap") ? "ifname" : "path", e.spec().path());
        m.put("number", e.port().index());
        m.put("link", e.port().isLinkUp() ? "up" : "down");
        if (e.port() instanceof VirtioNetPort v) {
            m.put("connected", v.connected());
            m.put("queue_pairs", v.options().queuePairs());
        }
        return m;
    }

    private List<Object> netMacs(Params p) throws RpcException {
        synchronized (lock) {
            NetSwitch n = net(p.id("net"));
            Map<Integer, String> byNumber = new java.util.HashMap<>();
            for (NetSwitch.PortEntry e : n.ports.values()) {
                byNumber.put(e.port().index(), e.spec().id());
            }
            List<Object> out = new ArrayList<>();
            for (MacTable.Entry e : n.sw.macTable().entries(n.sw.now())) {
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("mac", Mac.toString(e.mac()));
                m.put("port", byNumber.getOrDefault(e.port(), "#" + e.port()));
                m.put("age_seconds", e.ageSeconds());
                out.add(m);
            }
            return out;
        }
    }

    // ---- stats --------------------------------------------------------------------------------------------------

    private Object stats(Params p) throws RpcException {
        synchronized (lock) {
            if (p.has("id")) {
                String id = p.id("id");
                if (blks.containsKey(id)) {
                    return blkStats(blks.get(id));
                }
                if (nets.containsKey(id)) {
                    return netStats(nets.get(id));
                }
                if (nbds.containsKey(id)) {
                    return nbdStats(nbds.get(id));
                }
                throw new RpcException(RpcException.NOT_FOUND, "no disk or switch '" + id + "'");
            }
            Map<String, Object> m = new LinkedHashMap<>();
            List<Object> b = new ArrayList<>();
            for (BlkExport e : blks.values()) {
                b.add(blkStats(e));
            }
            List<Object> n = new ArrayList<>();
            for (NetSwitch s : nets.values()) {
                n.add(netStats(s));
            }
            List<Object> nb = new ArrayList<>();
            for (NbdExportEntry e : nbds.values()) {
                nb.add(nbdStats(e));
            }
            m.put("blk", b);
            m.put("net", n);
            m.put("nbd", nb);
            return m;
        }
    }

    private static Map<String, Object> blkStats(BlkExport e) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", e.spec.id());
        m.put("kind", "blk");
        m.putAll(blkCounters(e.device.stats()));
        List<Object> qs = new ArrayList<>();
        for (int i = 0; i < e.spec.queues(); i++) {
            Map<String, Object> q = new LinkedHashMap<>();
            q.put("queue", i);
            q.putAll(blkCounters(e.device.queueStats(i)));
            q.put("worker", workerCounters(e.device.workerStats(i)));
            qs.add(q);
        }
        m.put("queues", qs);
        return m;
    }

    /** A blk device's counters, the schema of {@code ctl} and of {@code serve blk}'s JSON statistics lines. */
    public static Map<String, Object> blkCounters(BlkStats.Snapshot s) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("requests", s.requests());
        m.put("reads", s.reads());
        m.put("writes", s.writes());
        m.put("flushes", s.flushes());
        m.put("discards", s.discards());
        m.put("bytes_read", s.bytesRead());
        m.put("bytes_written", s.bytesWritten());
        m.put("io_errors", s.ioErrors());
        m.put("bad_requests", s.badRequests());
        m.put("unsupported", s.unsupported());
        m.put("queue_failures", s.queueFailures());
        m.put("in_flight", s.inFlight());
        return m;
    }

    /**
     * What a queue's worker did (the idle strategy's account), the schema of {@code ctl stats} and of {@code serve}'s
     * JSON statistics lines: batches run, sleeps (each cost the driver a kick), spin hits (sleeps saved by
     * polling), notifications lost to a full call eventfd.
     */
    public static Map<String, Object> workerCounters(QueueWorker.Totals t) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("batches", t.batches());
        m.put("sleeps", t.sleeps());
        m.put("spin_hits", t.spinHits());
        m.put("lost_notifications", t.lostSignals());
        m.put("recheck_interrupts", t.recheckSignals());
        return m;
    }

    private static Map<String, Object> netStats(NetSwitch n) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("id", n.spec.id());
        m.put("kind", "net");
        m.put("macs", n.sw.macTable().size());
        List<Object> ports = new ArrayList<>();
        for (NetSwitch.PortEntry e : n.ports.values()) {
            ports.add(portCounters(e.spec().id(), e.port(), e.port().stats()));
        }
        m.put("ports", ports);
        return m;
    }

    /**
     * A switch port's counters, the schema of {@code ctl stats} and of {@code serve net}'s JSON statistics lines:
     * {@code port}, every {@link PortStat} by its label, and for a vhost-user port its transmit queues' workers
     * ({@code queues: [{queue: "tx0", worker}]}) then its receive queues' interrupts ({@code {queue: "rx0",
     * lost_notifications, recheck_interrupts}}); {@code st} is the snapshot of the port's counters to report.
     */
    public static Map<String, Object> portCounters(String id, io.iovirt.net.Port port, PortStats st) {
        Map<String, Object> pm = new LinkedHashMap<>();
        pm.put("port", id);
        for (PortStat s : PortStat.values()) {
            pm.put(s.label(), st.get(s));
        }
        if (port instanceof VirtioNetPort v) {
            List<Object> qs = new ArrayList<>();
            for (int i = 0; i < v.options().queuePairs(); i++) {
                Map<String, Object> q = new LinkedHashMap<>();
                q.put("queue", "tx" + i);
                q.put("worker", workerCounters(v.txWorkerStats(i)));
                qs.add(q);
            }
            for (int i = 0; i < v.options().queuePairs(); i++) {
                VirtioNetPort.RxQueueTotals t = v.rxQueueTotals(i);
                Map<String, Object> q = new LinkedHashMap<>();
                q.put("queue", "rx" + i);
                q.put("lost_notifications", t.lostSignals());
                q.put("recheck_interrupts", t.recheckSignals());
                qs.add(q);
            }
            pm.put("queues", qs);
        }
        return pm;
    }

    // ---- views for metrics, libvirt and config reloads ----------------------------------------------------------

    List<BlkExport> blkExports() {
        synchronized (lock) {
            return List.copyOf(blks.values());
        }
    }

    List<NetSwitch> switches() {
        synchronized (lock) {
            return List.copyOf(nets.values());
        }
    }

    /** Runs {@code action} with the device registry locked (config reloads apply a whole difference at once). */
    <T> T locked(java.util.function.Supplier<T> action) {
        synchronized (lock) {
            return action.get();
        }
    }

    Object lock() {
        return lock;
    }

    Map<String, BlkExport> blksLocked() {
        return blks;
    }

    Map<String, NetSwitch> netsLocked() {
        return nets;
    }

    Map<String, NbdExportEntry> nbdsLocked() {
        return nbds;
    }

    BlkExport findBlk(String id) throws RpcException {
        return blk(id);
    }

    NetSwitch findNet(String id) throws RpcException {
        return net(id);
    }

    private String nextId(String prefix, Map<String, ?> taken) {
        String id;
        int n = prefix.equals("blk") ? nextBlk : prefix.equals("net") ? nextNet : nextNbd;
        do {
            id = prefix + n++;
        } while (taken(id) || taken.containsKey(id));
        if (prefix.equals("blk")) {
            nextBlk = n;
        } else if (prefix.equals("net")) {
            nextNet = n;
        } else {
            nextNbd = n;
        }
        return id;
    }

    private void checkOpen() throws RpcException {
        if (closed) {
            throw new RpcException(RpcException.FAILED, "the daemon is stopping");
        }
    }

    /** Stops every device: exports finish their in-flight requests and sync, switches close their ports. */
    @Override
    public void close() {
        List<BlkExport> b;
        List<NetSwitch> n;
        List<NbdExportEntry> nb;
        synchronized (lock) {
            closed = true;
            nb = new ArrayList<>(nbds.values());
            nbds.clear();
            b = new ArrayList<>(blks.values());
            n = new ArrayList<>(nets.values());
            blks.clear();
            nets.clear();
        }
        for (NetSwitch s : n) {
            try {
                s.close();
            } catch (RuntimeException e) {
                LOG.log(System.Logger.Level.ERROR, "net " + s.spec.id() + ": closing failed", e);
            }
        }
        for (NbdExportEntry e : nb) {
            try {
                e.close();
            } catch (RuntimeException ex) {
                LOG.log(System.Logger.Level.ERROR, "nbd " + e.spec.id() + ": closing failed", ex);
            }
        }
        for (BlkExport e : b) {
            try {
                e.close();
            } catch (RuntimeException ex) {
                LOG.log(System.Logger.Level.ERROR, "blk " + e.spec.id() + ": closing failed", ex);
            }
        }
    }
}
