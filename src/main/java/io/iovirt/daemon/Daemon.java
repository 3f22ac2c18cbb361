// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.devices.blk.BlkDevice;
import io.iovirt.devices.blk.BlkStats;
import io.iovirt.net.Mac;
import io.iovirt.net.MacTable;
import io.iovirt.net.PortStat;
import io.iovirt.net.PortStats;
import io.iovirt.util.Json;
import io.iovirt.virtio.QueueWorker;
import java.io.IOException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The devices one {@code iovirt daemon} hosts, and the control API's methods on them. The registry of devices is
 * guarded by this object's lock, which is held only for quick looks and changes: opening an image, starting or
 * stopping a device (a flush, a frontend to wait for) happen outside it, so one slow request delays only itself —
 * not the other requests, a reload or /metrics. Between the two, a device's id, socket and image are claimed
 * ({@link ClaimRegistry}, guarded by the same lock, so a claim and its device's map entry change in one step). The
 * data paths never take the lock (each device has its own threads). A request that fails leaves everything as it was
 * and gets an {@link RpcException} that says what to do. The answers' JSON is shaped by {@link DeviceJson}.
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
    /** What adds and removes under way hold, and whether the daemon still takes new ones; guarded by lock too. */
    private final ClaimRegistry claims =
            new ClaimRegistry(lock, id -> blks.containsKey(id) || nets.containsKey(id) || nbds.containsKey(id));

    /** What the stop exited without waiting for: {@link #leftAtStop}. */
    private final List<String> leftAtStop = new java.util.concurrent.CopyOnWriteArrayList<>();

    /** Where adds open their images: bounded in number and in how long a request waits for one. */
    private final ImageOpens opens = new ImageOpens();

    private final io.iovirt.linux.SocketAccess access;
    private final long startMillis = System.currentTimeMillis();
    private int nextBlk; // the next default ids: guarded by lock
    private int nextNet;
    private int nextPort;
    private int nextNbd;
    /** Counts the registry's changes (guarded by lock): a request that failed after changing it still saves. */
    private long changes;

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

    /** How long an add waits for its image's open before it fails (tests; {@link ImageOpens#WAIT}). */
    void openWait(Duration d) {
        opens.waitFor(d);
    }

    /** How long the daemon's stop waits in all for its exports (tests; {@link #STOP_CLOSE_WAIT}). */
    void stopWait(Duration d) {
        stopWait = d;
    }

    io.iovirt.linux.SocketAccess access() {
        return access;
    }

    /**
     * Where the backing files of the images the daemon opens from now on may be: the configuration file's
     * {@code backing} (UNRESTRICTED without one). Set at start and by each reload, before its adds; images already
     * open keep the chains they opened (their files are open: a tighter policy applies to the next open).
     */
    private volatile io.iovirt.storage.BackingPolicy backing = io.iovirt.storage.BackingPolicy.UNRESTRICTED;

    void backing(io.iovirt.storage.BackingPolicy policy) {
        backing = policy;
    }

    io.iovirt.storage.BackingPolicy backing() {
        return backing;
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

    /** The parameters of blk.add, which a configuration file's blk entries take too. */
    static final String[] BLK_PARAMS = {
        "id", "image", "socket", "queues", "readonly", "direct", "serial", "io-engine", "format"
    };
    /** The parameters of nbd.add and of a configuration file's nbd entries. */
    static final String[] NBD_PARAMS = {"id", "image", "socket", "readonly", "format"};
    /** The parameters of net.add and of a configuration file's net entries (which list their ports besides). */
    static final String[] NET_PARAMS = {"id", "mtu", "mac-aging", "macs-per-port", "poll-threads"};
    /** The parameters of a port in a configuration file's net entry; net.port.add also names the switch. */
    static final String[] PORT_PARAMS = {"id", "kind", "path", "ifname", "queues", "mac"};

    /** The parameters of net.port.add, and of an entry of a state file's {@code ports} list. */
    static final String[] PORT_ADD_PARAMS = java.util.stream.Stream.concat(
                    java.util.stream.Stream.of("net"), java.util.Arrays.stream(PORT_PARAMS))
            .toArray(String[]::new);

    /** Executes one control request. Never throws anything but {@link RpcException} for a bad or failed request. */
    public Object call(String method, Map<String, Object> params) throws RpcException {
        long before = locked(() -> changes);
        Object result;
        try {
            result = dispatch(method, params);
        } catch (RpcException | RuntimeException e) {
            // a remove that failed after its device left the registry (closing it threw): what runs changed
            if (CHANGES.contains(method) && locked(() -> changes) != before) {
                savedAfterFailure(method + " failed after changing the devices");
            }
            throw e;
        }
        if (CHANGES.contains(method)) {
            saved(method, result);
        }
        return result;
    }

    private Object dispatch(String method, Map<String, Object> params) throws RpcException {
        Params p = new Params(method, params);
        return switch (method) {
            case "version" -> version(p.allow());
            case "blk.add" -> blkAdd(p.allow(BLK_PARAMS), false);
            case "blk.remove" -> removed(p.allow("id"), "blk", id -> removeBlk(id, null));
            case "blk.list" -> blkList(p.allow());
            case "blk.info" -> blkInfo(p.allow("id"));
            case "blk.resize" -> blkResize(p.allow("id", "size"));
            case "blk.set-readonly" -> blkSetReadOnly(p.allow("id", "readonly"));
            case "net.add" -> netAdd(p.allow(NET_PARAMS), false);
            case "net.remove" ->
                removed(p.allow("id"), "net", id -> {
                    removeNet(id, null);
                    return null;
                });
            case "net.port.add" -> portAdd(p.allow(PORT_ADD_PARAMS), false);
            case "net.port.remove" -> portRemove(p.allow("net", "id"));
            case "net.list" -> netList(p.allow());
            case "net.macs" -> netMacs(p.allow("net"));
            case "nbd.add" -> nbdAdd(p.allow(NBD_PARAMS));
            case "nbd.remove" -> removed(p.allow("id"), "nbd", id -> removeNbd(id, null));
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

    /**
     * Writes the state file after a change no request's answer saves ({@code what} happened): a request that failed
     * but changed the registry, or a switch that ended after it answered; a failed write is logged.
     */
    private void savedAfterFailure(String what) {
        StateFile s = state;
        if (s == null) {
            return;
        }
        try {
            s.save(this);
        } catch (IOException | RuntimeException e) {
            LOG.log(
                    System.Logger.Level.ERROR,
                    what + ", and the state file could not be written: " + e.getMessage()
                            + "; any later change writes the whole state file again");
        }
    }

    /**
     * The methods that change the devices, after each of which the state file is written (with --state). Not
     * blk.resize: a disk's size is its image's, which the resize itself grows and syncs.
     */
    private static final java.util.Set<String> CHANGES = java.util.Set.of(
            "blk.add",
            "blk.remove",
            "blk.set-readonly",
            "net.add",
            "net.remove",
            "net.port.add",
            "net.port.remove",
            "nbd.add",
            "nbd.remove");

    /** The state file (--state), or null: devices added through the API are then runtime-only. */
    private volatile StateFile state;

    void state(StateFile s) {
        this.state = s;
    }

    /**
     * Writes the state file after a successful change (not under the registry lock: the write fsyncs). A failed
     * write leaves the change in place — a remove cannot be undone, and undoing an add would pull a disk from a guest
     * that may already use it — and fails the request, saying that it ran but is not saved: the caller must not
     * believe it persistent. The next successful write (any later change) saves everything that runs.
     */
    private void saved(String method, Object result) throws RpcException {
        StateFile s = state;
        if (s == null) {
            return;
        }
        try {
            if (!s.save(this)) {
                String msg = method + " was done (" + Json.compact(result) + ") but is not saved: the daemon was"
                        + " stopping meanwhile, and its stop is not recorded as removals; the state file lists the"
                        + " devices as they were before, so check them after the next start";
                LOG.log(System.Logger.Level.WARNING, msg);
                throw new RpcException(RpcException.FAILED, msg);
            }
        } catch (IOException | RuntimeException e) {
            String msg = method + " was done (" + Json.compact(result) + ") but is not saved: " + e.getMessage()
                    + "; it runs now and would be lost at a restart — fix the cause, then any later change (e.g."
                    + " blk.set-readonly of a disk to its current value) writes the whole state file again";
            LOG.log(System.Logger.Level.ERROR, msg);
            throw new RpcException(RpcException.FAILED, msg);
        }
    }

    /**
     * What state file {@code file} holds (lock held): the devices added through the API, each as it was added (a
     * disk's {@code readonly}: how its image was opened) with a disk that blk.set-readonly switched read-only marked
     * {@code readonly-now}, in the configuration file's shape; ports added through the API
     * to a switch of the configuration file under {@code ports}, with their switch's id. Null when {@code file} is no
     * longer this daemon's: {@link #close} lets go of it before it empties the registry, so a request still
     * finishing then (a remove or set-readonly that outlasted the control socket's wait) cannot record the stop as
     * the removal of every device — the check and the snapshot are one look under the lock, which the stop cannot
     * split.
     */
    Map<String, Object> apiDevicesLocked(StateFile file) {
        if (state != file) {
            return null;
        }
        List<Object> b = new ArrayList<>();
        for (BlkExport e : blks.values()) {
            if (!e.fromConfig) {
                b.add(ConfigFile.blkEntry(e.spec, e.image.readOnly()));
            }
        }
        List<Object> nb = new ArrayList<>();
        for (NbdExportEntry e : nbds.values()) {
            if (!e.fromConfig) {
                nb.add(ConfigFile.nbdEntry(e.spec));
            }
        }
        List<Object> n = new ArrayList<>();
        List<Object> ports = new ArrayList<>();
        for (NetSwitch s : nets.values()) {
            List<NetSwitch.PortSpec> api = new ArrayList<>();
            for (NetSwitch.PortEntry pe : s.ports.values()) {
                if (!pe.fromConfig()) {
                    api.add(pe.spec());
                }
            }
            if (!s.fromConfig) {
                n.add(ConfigFile.netEntry(s.spec, api));
            } else {
                for (NetSwitch.PortSpec ps : api) {
                    ports.add(ConfigFile.switchPortEntry(s.spec, ps));
                }
            }
        }
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("blk", b);
        m.put("nbd", nb);
        m.put("net", n);
        m.put("ports", ports);
        return m;
    }

    /**
     * What blk.remove, nbd.remove and net.remove answer once {@code remove} has removed the entry the id names. With
     * --state, the state file's carried entry of that id ({@code kind}: "blk", "nbd", "net") goes too; an id that
     * names no running device but such an entry (it did not start at this daemon's start) is removed from the file.
     */
    private Map<String, Object> removed(Params p, String kind, Remove remove) throws RpcException {
        String id = p.id("id");
        StateFile s = state;
        String notice;
        try {
            notice = remove.remove(id);
        } catch (RpcException e) {
            if (e.code() == RpcException.NOT_FOUND && s != null && s.forget(kind, null, id)) {
                return notStarted(Json.object("id", id, "removed", true));
            }
            throw e;
        }
        if (s != null) {
            s.forget(kind, null, id); // a switch's carried ports, say
        }
        return notice == null
                ? Json.object("id", id, "removed", true)
                : Json.object("id", id, "removed", true, "notice", notice);
    }

    /** A remove's answer for an entry only the state file listed (it did not start at this daemon's start). */
    private static Map<String, Object> notStarted(Map<String, Object> m) {
        Map<String, Object> out = new LinkedHashMap<>(m);
        out.put(
                "notice",
                "it was not running (it did not start when the daemon started); removed from the state file, so it"
                        + " does not come back at the next start");
        return out;
    }

    @FunctionalInterface
    private interface Remove {
        /** Removes {@code id}; null, or what the answer adds as its notice (an image still being closed). */
        String remove(String id) throws RpcException;
    }

    /** What the control API's reload runs (set by {@link DaemonService}; none: the method is refused). */
    interface Reloader {
        ConfigFile.Outcome reload() throws RpcException;
    }

    private volatile Reloader reloader;

    /** A reload's answer when there is no file to re-read. */
    static final String NO_CONFIG = "reload: the daemon was started without --config, so there is no file to re-read;"
            + " restart it with --config FILE to manage devices from a file";

    void reloader(Reloader r) {
        this.reloader = r;
    }

    /** Not under the lock: applying the file takes it, and a reload may run on another thread (SIGHUP). */
    private Map<String, Object> reload(Params p) throws RpcException {
        Reloader r = reloader;
        if (r == null) {
            throw new RpcException(RpcException.FAILED, NO_CONFIG);
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
        io.iovirt.storage.ImageFormat format = format(p, "blk.add", " (or auto: detect from the header)");
        return new BlkExport.Spec(id, image, socket, queues, ro, direct, serial, engine, format);
    }

    private Map<String, Object> blkAdd(Params p, boolean fromConfig) throws RpcException {
        BlkExport.Spec spec;
        synchronized (lock) {
            spec = blkSpec(p, nextId("blk", blks));
        }
        return Json.object("id", addBlk(spec, fromConfig).spec.id());
    }

    /**
     * Starts a blk export. The image is opened without the daemon's lock (a slow file system delays only this
     * request, not the others nor /metrics); its id, socket and image are claimed first, so a concurrent request
     * for any of them is refused as in use.
     */
    BlkExport addBlk(BlkExport.Spec spec, boolean fromConfig) throws RpcException {
        return addBlk(spec, fromConfig, false);
    }

    /** {@link #addBlk(BlkExport.Spec, boolean)}, switched read-only before it serves when {@code readOnlyNow}. */
    BlkExport addBlk(BlkExport.Spec spec, boolean fromConfig, boolean readOnlyNow) throws RpcException {
        ClaimRegistry.Claim c = claims.claim(new ClaimRegistry.Claim(
                null,
                spec.id(),
                "blk '" + spec.id() + "'",
                ClaimRegistry.socketKey(spec.socket()),
                null,
                null,
                spec.readOnly()));
        BlkExport e;
        try {
            claims.requireImagePathFree(c, spec.image());
        } catch (RpcException ex) {
            claims.release(c);
            throw ex;
        }
        try {
            e = opens.run( // a bounded wait: the image's file system may not answer (ImageOpens)
                    "blk.add " + spec.id(),
                    spec.image(),
                    wanted -> {
                        claims.claimImage(c, ClaimRegistry.imageKey(spec.image()));
                        return BlkExport.start(spec, fromConfig, access, readOnlyNow, wanted, backing);
                    },
                    () -> claims.release(c));
        } catch (IOException | RuntimeException ex) { // the claim is released (or will be: ImageOpens)
            throw new RpcException(RpcException.FAILED, "blk.add " + spec.id() + ": " + ex.getMessage());
        }
        // a blk.set-readonly false answered with the disk still read-only (writable_pending) saved it read-only: saved
        // again once the disk has become writable, or the next start would serve it read-only
        e.device.onSwitchEndedLate(
                () -> savedAfterFailure("blk " + spec.id() + " became writable after its blk.set-readonly answered"));
        claims.publish(c, "blk.add " + spec.id(), e, () -> {
            blks.put(spec.id(), e);
            changes++;
        });
        LOG.log(
                System.Logger.Level.INFO,
                "blk " + spec.id() + ": serving " + spec.image() + " on " + spec.socket() + " ("
                        + e.device.ioDescription() + ")");
        return e;
    }

    /**
     * Stops the blk export {@code id} ({@code expected}: only if it is still that one; null: whichever it is). It is
     * taken out under the lock and closed outside it (the frontend's requests in flight, the fsync); its id, socket
     * and image stay claimed until it is closed, so nothing new takes them while it still runs.
     */
    String removeBlk(String id, BlkExport expected) throws RpcException {
        return removeExport(blks, id, expected, Kind.BLK);
    }

    /**
     * How long a removal waits in all for its export to stop and its image to be flushed and closed ({@link
     * #removeExport}) before it answers that the export is still stopping or its image still being closed: a final
     * flush on a file system that does not answer does not end, nor does a device callback waiting on one, and
     * neither must hold the control thread.
     */
    static final java.time.Duration CLOSE_WAIT = java.time.Duration.ofSeconds(5);

    /**
     * How long the daemon's stop waits in all, from its start, for its exports to stop and their images to be flushed
     * and closed ({@link #close}): below the systemd unit's TimeoutStopSec (60 s), so that the images still being
     * flushed are named in the log.
     */
    static final java.time.Duration STOP_CLOSE_WAIT = java.time.Duration.ofSeconds(45);

    private volatile java.time.Duration stopWait = STOP_CLOSE_WAIT;

    /** The stop's deadline ({@link System#nanoTime}), taken once by {@link #stopStarts}; null until then. */
    private final java.util.concurrent.atomic.AtomicReference<Long> stopDeadline =
            new java.util.concurrent.atomic.AtomicReference<>();

    /**
     * The daemon's stop begins now (SIGTERM or SIGINT, before the control socket and /metrics are closed, each of
     * which can wait 10 s): its one deadline — {@link #STOP_CLOSE_WAIT} from now, below the unit's TimeoutStopSec —
     * is taken here, so that everything the stop does counts against it, {@link #close} included. The first call
     * takes it; returns it ({@link System#nanoTime}).
     */
    long stopStarts() {
        return stopStarts(System.nanoTime());
    }

    /**
     * As {@link #stopStarts()}, for a stop that began at {@code at} ({@link System#nanoTime}): when the signal
     * arrived, which can be before it is handled (a reload the signal waited for).
     */
    long stopStarts(long at) {
        stopDeadline.compareAndSet(null, at + stopWait.toNanos());
        return stopDeadline.get();
    }

    /** What {@link #removeExport} takes out and closes: a blk or NBD export, whose close throws nothing. */
    interface Export extends AutoCloseable {
        /**
         * Starts the close (once): the server stops on this thread, waiting a bounded time (a stop that outlasts it
         * ends on the close thread: {@link ImageRelease#afterStop}); the image is flushed and closed on that thread.
         */
        ImageRelease.Closing closeAsync();

        /** Starts the close and does not wait for the image's ({@link #closeAsync}). */
        @Override
        default void close() {
            closeAsync();
        }
    }

    /**
     * Takes the export {@code id} of {@code kind} out of {@code map} under the lock ({@code expected}: only if it is
     * still that one; null: whichever it is) and closes it outside the lock; its claim (id, socket, image) is let go
     * of only once it is closed, so nothing new takes them while it still runs.
     */
    private <E extends Export> String removeExport(Map<String, E> map, String id, E expected, Kind kind)
            throws RpcException {
        E e;
        ClaimRegistry.Claim c;
        synchronized (lock) {
            e = existing(map, id, kind);
            requireExpected(e, expected, kind.name(id));
            map.remove(id);
            changes++;
            c = claims.removing(id);
        }
        // one bound for the whole removal, its server's stop included (a blk export's waits for its frontend's
        // session, which a device callback stuck on a file system that does not answer can hold: BlkExport)
        long deadline = System.nanoTime() + CLOSE_WAIT.toNanos();
        ImageRelease.Closing closing;
        try {
            closing = e.closeAsync();
        } catch (RuntimeException ex) {
            claims.release(c);
            throw ex;
        }
        // the claim goes with the image's close (its lock let go after its final flush), not with this answer; it
        // stays while the image is left open (its close could not be run)
        claims.releaseWhenClosed(c, closing);
        String notice = closing.await(java.time.Duration.ofNanos(Math.max(0, deadline - System.nanoTime())));
        // logged for every caller: a reload's removal answers with none of it
        if (notice == null) {
            LOG.log(System.Logger.Level.INFO, closing.who + ": removed");
        } else {
            LOG.log(System.Logger.Level.WARNING, closing.who + ": removed: " + notice);
        }
        return notice;
    }

    private BlkExport blk(String id) throws RpcException {
        synchronized (lock) {
            return existing(blks, id, Kind.BLK);
        }
    }

    private List<Object> blkList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (BlkExport e : blks.values()) {
                out.add(DeviceJson.blkSummary(e));
            }
            return out;
        }
    }

    private Map<String, Object> blkInfo(Params p) throws RpcException {
        return DeviceJson.blkInfo(blk(p.id("id")));
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
        String pending; // read-only: why the lock is still exclusive; writable: why the disk is still read-only
        try {
            pending = e.device.setReadOnly(ro);
        } catch (IOException ex) {
            throw new RpcException(RpcException.FAILED, "blk.set-readonly " + e.spec.id() + ": " + ex.getMessage());
        }
        return Json.object(
                "id",
                e.spec.id(),
                "readonly",
                ro,
                "lock_pending",
                ro && pending != null,
                "writable_pending",
                !ro && pending != null,
                "notice",
                (!ro && pending != null
                                ? "writes are accepted once the disk is writable"
                                : "writes are " + (ro ? "refused" : "accepted") + " from now on")
                        + "; the guest's driver sees the read-only flag change after its next reset"
                        + (pending == null ? "" : "; " + pending));
    }

    // ---- nbd ----------------------------------------------------------------------------------------------------

    private Map<String, Object> nbdAdd(Params p) throws RpcException {
        NbdExportEntry.Spec spec;
        synchronized (lock) {
            claims.checkOpen();
            spec = nbdSpec(p, nextId("nbd", nbds));
        }
        addNbd(spec, false);
        return Json.object("id", spec.id());
    }

    /** The parameters of nbd.add (and of a configuration file's nbd entry) as a spec; nothing is opened yet. */
    NbdExportEntry.Spec nbdSpec(Params p, String defaultId) throws RpcException {
        String id = defaultId == null ? p.id("id") : p.id("id", defaultId);
        Path image = p.path("image");
        Path socket = p.path("socket");
        io.iovirt.storage.ImageFormat format = format(p, "nbd.add", " (or auto)");
        return new NbdExportEntry.Spec(id, image, socket, p.bool("readonly", false), format);
    }

    /**
     * The image format parameter of blk.add and nbd.add: null (detect from the header) when absent or auto; a name
     * it does not know is refused as {@code method: ...} followed by {@code orAuto}.
     */
    private static io.iovirt.storage.ImageFormat format(Params p, String method, String orAuto) throws RpcException {
        try {
            return p.has("format") && !p.string("format").equals("auto")
                    ? io.iovirt.storage.ImageFormat.parse(p.string("format"))
                    : null;
        } catch (IllegalArgumentException e) {
            throw RpcException.params(method + ": " + e.getMessage() + orAuto);
        }
    }

    /**
     * Starts an NBD export: its image opened, its own server listening on its socket — without the daemon's lock,
     * after claiming its id, socket and image (as {@link #addBlk}).
     */
    void addNbd(NbdExportEntry.Spec spec, boolean fromConfig) throws RpcException {
        String id = spec.id();
        ClaimRegistry.Claim c = claims.claim(new ClaimRegistry.Claim(
                null, id, "nbd '" + id + "'", ClaimRegistry.socketKey(spec.socket()), null, null, spec.readOnly()));
        NbdExportEntry e;
        try {
            claims.requireImagePathFree(c, spec.image());
        } catch (RpcException ex) {
            claims.release(c);
            throw ex;
        }
        try {
            e = opens.run( // a bounded wait, as addBlk's
                    "nbd.add " + id,
                    spec.image(),
                    wanted -> {
                        claims.claimImage(c, ClaimRegistry.imageKey(spec.image()));
                        return NbdExportEntry.start(spec, access, fromConfig, wanted, backing);
                    },
                    () -> claims.release(c));
        } catch (IOException | RuntimeException ex) { // the claim is released (or will be: ImageOpens)
            throw new RpcException(RpcException.FAILED, "nbd " + id + ": " + ex.getMessage());
        }
        claims.publish(c, "nbd " + id, e, () -> {
            nbds.put(id, e);
            changes++;
        });
        LOG.log(
                System.Logger.Level.INFO,
                "nbd " + id + ": exporting " + spec.image() + " on " + spec.socket()
                        + (fromConfig ? " (configuration file)" : ""));
    }

    /**
     * Stops an NBD export: its clients are disconnected (their requests in flight complete), its image closed —
     * outside the lock, as {@link #removeBlk}.
     */
    String removeNbd(String id, NbdExportEntry expected) throws RpcException {
        return removeExport(nbds, id, expected, Kind.NBD);
    }

    private List<Object> nbdList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (NbdExportEntry e : nbds.values()) {
                out.add(DeviceJson.nbdSummary(e));
            }
            return out;
        }
    }

    List<NbdExportEntry> nbdExports() {
        synchronized (lock) {
            return List.copyOf(nbds.values());
        }
    }

    /**
     * A reload removes only the device it saw ({@code expected}; null: any): one removed and added again through
     * the API meanwhile is not its own.
     */
    private static void requireExpected(Object found, Object expected, String what) throws RpcException {
        if (expected != null && found != expected) {
            throw new RpcException(
                    RpcException.NOT_FOUND,
                    what + " was replaced through the API while the configuration was applied; it is left as it is");
        }
    }

    /**
     * A kind of entry the daemon keeps by id, as its messages name it: one ({@code one}: "disk"), several
     * ({@code many}: "disks"), the method that adds one ({@code add}: "blk.add") and the label of one entry
     * ({@code label}: "blk", as in "blk 'vm1'").
     */
    private record Kind(String one, String many, String add, String label) {
        static final Kind BLK = new Kind("disk", "disks", "blk.add", "blk");
        static final Kind NBD = new Kind("NBD export", "exports", "nbd.add", "nbd");
        static final Kind NET = new Kind("switch", "switches", "net.add", "switch");

        /** Entry {@code id} in a message: "blk 'vm1'". */
        String name(String id) {
            return label + " '" + id + "'";
        }
    }

    /**
     * The entry {@code id} of {@code map}, of {@code kind}; otherwise NOT_FOUND, naming the entries there are or the
     * method that adds one.
     */
    private static <T> T existing(Map<String, T> map, String id, Kind kind) throws RpcException {
        T e = map.get(id);
        if (e == null) {
            throw new RpcException(
                    RpcException.NOT_FOUND,
                    "no " + kind.one() + " '" + Params.printable(id) + "'"
                            + (map.isEmpty()
                                    ? " (there are none; add one with " + kind.add() + ")"
                                    : " (" + kind.many() + ": " + String.join(", ", map.keySet()) + ")"));
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
        NetSwitch.Spec spec;
        synchronized (lock) {
            spec = netSpec(p, nextId("net", nets));
        }
        return Json.object("id", addNet(spec, fromConfig).spec.id());
    }

    /** A new switch (quick: no file, no socket — its threads start under the lock). */
    NetSwitch addNet(NetSwitch.Spec spec, boolean fromConfig) throws RpcException {
        synchronized (lock) {
            ClaimRegistry.Claim c = claims.claim(
                    new ClaimRegistry.Claim(null, spec.id(), "switch '" + spec.id() + "'", null, null, null, false));
            NetSwitch n;
            try {
                n = new NetSwitch(spec, fromConfig);
            } catch (RuntimeException | io.iovirt.linux.LinuxException ex) {
                claims.release(c);
                throw new RpcException(RpcException.FAILED, "net.add " + spec.id() + ": " + ex.getMessage());
            }
            nets.put(spec.id(), n);
            changes++;
            claims.activate(c);
            LOG.log(System.Logger.Level.INFO, "net " + spec.id() + ": switch added (MTU " + spec.mtu() + ")");
            return n;
        }
    }

    /**
     * Removes switch {@code id} and closes its ports outside the lock (each waits for its frontend); the switch's and
     * its ports' claims are let go once they have stopped. {@code expected}: a reload's — only if it is still that
     * switch, and not while it has ports added through the API, which a reload never touches (their guests would
     * lose their NICs); null: the API's, whatever it has.
     */
    void removeNet(String id, NetSwitch expected) throws RpcException {
        NetSwitch n;
        List<ClaimRegistry.Claim> held = new ArrayList<>();
        synchronized (lock) {
            n = net(id);
            requireExpected(n, expected, Kind.NET.name(id));
            List<String> api = n.ports.values().stream()
                    .filter(e -> !e.fromConfig())
                    .map(e -> e.spec().id())
                    .toList();
            if (expected != null && !api.isEmpty()) {
                throw new RpcException(
                        RpcException.FAILED,
                        "switch '" + id + "' has ports added through the API (" + String.join(", ", api)
                                + "), which a reload never touches, so it keeps running as it is; to apply the"
                                + " file's change, remove those ports (net.port.remove) and send SIGHUP again");
            }
            nets.remove(id);
            changes++;
            held.add(claims.removing(id));
            for (String port : n.ports.keySet()) {
                held.add(claims.removing(ClaimRegistry.Claim.key(id, port)));
            }
            n.ports.clear();
        }
        try {
            n.close();
        } finally {
            held.forEach(claims::release);
        }
        LOG.log(System.Logger.Level.INFO, "net " + id + ": removed");
    }

    private NetSwitch net(String id) throws RpcException {
        synchronized (lock) {
            return existing(nets, id, Kind.NET);
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
        NetSwitch n;
        NetSwitch.PortSpec ps;
        synchronized (lock) {
            n = net(p.id("net"));
            ps = portSpec(p, nextPortId(n));
        }
        String warning = addPort(n, ps, fromConfig);
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("net", n.spec.id());
        m.put("id", ps.id());
        if (warning != null) {
            m.put("mac_table_warning", warning);
        }
        return m;
    }

    /**
     * Adds a port to switch {@code n}: its socket or TAP opened without the daemon's lock, after claiming its id
     * and socket or TAP interface; it joins {@code n.ports} only if the switch still runs then. Returns the MAC table warning
     * ({@link io.iovirt.net.Switch#macTableOvercommit()}) when the switch's ports now overcommit it, else null; it is
     * logged when this port made it so.
     */
    String addPort(NetSwitch n, NetSwitch.PortSpec ps, boolean fromConfig) throws RpcException {
        String what = "net.port.add " + n.spec.id() + "/" + ps.id();
        Path socket = ps.kind().equals("tap") ? null : ClaimRegistry.socketKey(Path.of(ps.path()));
        ClaimRegistry.Claim c;
        synchronized (lock) {
            requireSwitch(n);
            c = claims.claim(new ClaimRegistry.Claim(
                    n.spec.id(),
                    ps.id(),
                    "port '" + ps.id() + "' of switch '" + n.spec.id() + "'",
                    socket,
                    ps.kind().equals("tap") ? ps.path() : null,
                    null,
                    false));
        }
        NetSwitch.PortEntry e;
        try {
            e = n.startPort(ps, fromConfig, access);
        } catch (IOException | RuntimeException ex) {
            claims.release(c);
            throw new RpcException(RpcException.FAILED, what + ": " + ex.getMessage());
        }
        synchronized (lock) {
            if (!claims.closed() && nets.get(n.spec.id()) == n) {
                n.ports.put(ps.id(), e);
                changes++;
                claims.activate(c);
                LOG.log(
                        System.Logger.Level.INFO,
                        "net " + n.spec.id() + ": port " + ps.id() + " (" + ps.kind() + " " + ps.path() + ") added");
                String warning = n.sw.macTableOvercommit();
                if (n.overcommitted(warning != null)) {
                    LOG.log(System.Logger.Level.WARNING, "net " + n.spec.id() + ": " + warning);
                }
                return warning;
            }
        }
        try {
            n.stopPort(e); // the switch was removed, or the daemon began stopping, while the port started
        } finally {
            claims.release(c);
        }
        throw new RpcException(
                RpcException.FAILED, what + ": the switch was removed or the daemon began stopping meanwhile");
    }

    /** net.port.remove; a port only the state file lists (as {@link #removed}) is removed from the file. */
    private Map<String, Object> portRemove(Params p) throws RpcException {
        String net = p.id("net");
        String id = p.id("id");
        StateFile s = state;
        try {
            NetSwitch n;
            synchronized (lock) {
                n = net(net);
            }
            removePort(n, id, null);
        } catch (RpcException e) {
            if (e.code() == RpcException.NOT_FOUND && s != null && s.forget("port", net, id)) {
                return notStarted(Json.object("net", net, "id", id, "removed", true));
            }
            throw e;
        }
        if (s != null) {
            s.forget("port", net, id);
        }
        return Json.object("net", net, "id", id, "removed", true);
    }

    /**
     * Removes port {@code id} of switch {@code n} ({@code expected}: only if it is still that one): taken out under
     * the lock, stopped outside it (its frontend is disconnected, its queues stop), its claim let go after.
     */
    void removePort(NetSwitch n, String id, NetSwitch.PortEntry expected) throws RpcException {
        NetSwitch.PortEntry e;
        ClaimRegistry.Claim c;
        synchronized (lock) {
            requireSwitch(n);
            e = n.ports.get(id);
            if (e == null) {
                throw new RpcException(
                        RpcException.NOT_FOUND,
                        "switch '" + n.spec.id() + "' has no port '" + Params.printable(id) + "' (ports: "
                                + String.join(", ", n.ports.keySet()) + ")");
            }
            requireExpected(e, expected, "port '" + id + "' of switch '" + n.spec.id() + "'");
            n.ports.remove(id);
            changes++;
            c = claims.removing(ClaimRegistry.Claim.key(n.spec.id(), id));
        }
        try {
            n.stopPort(e);
        } finally {
            claims.release(c);
        }
        synchronized (lock) {
            n.overcommitted(n.sw.macTableOvercommit() != null); // fitting again, the next crossing is warned of
        }
        LOG.log(System.Logger.Level.INFO, "net " + n.spec.id() + ": port " + id + " removed");
    }

    /** Refuses a port request for a switch removed (or replaced) since the request looked it up (lock held). */
    private void requireSwitch(NetSwitch n) throws RpcException {
        if (nets.get(n.spec.id()) != n) {
            throw new RpcException(
                    RpcException.NOT_FOUND,
                    "switch '" + n.spec.id() + "' was removed meanwhile (net.list shows the switches there are)");
        }
    }

    private String nextPortId(NetSwitch n) {
        String id;
        do {
            id = "port" + nextPort++;
        } while (n.ports.containsKey(id) || claims.holds(ClaimRegistry.Claim.key(n.spec.id(), id)));
        return id;
    }

    private List<Object> netList(Params p) {
        synchronized (lock) {
            List<Object> out = new ArrayList<>();
            for (NetSwitch n : nets.values()) {
                out.add(DeviceJson.netSummary(n));
            }
            return out;
        }
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
                    return DeviceJson.blkStats(blks.get(id));
                }
                if (nets.containsKey(id)) {
                    return DeviceJson.netStats(nets.get(id));
                }
                if (nbds.containsKey(id)) {
                    return DeviceJson.nbdStats(nbds.get(id));
                }
                List<String> all = new ArrayList<>(blks.keySet());
                all.addAll(nbds.keySet());
                all.addAll(nets.keySet());
                throw new RpcException(
                        RpcException.NOT_FOUND,
                        "no disk, NBD export or switch '" + Params.printable(id) + "'"
                                + (all.isEmpty()
                                        ? " (there are none; add one with blk.add, nbd.add or net.add)"
                                        : " (ids: " + String.join(", ", all) + ")"));
            }
            return DeviceJson.stats(blks.values(), nets.values(), nbds.values());
        }
    }

    /** An NBD export's counters, the schema of {@code ctl} and of {@code serve nbd}'s JSON statistics lines. */
    public static Map<String, Object> nbdCounters(io.iovirt.nbd.NbdExportStats s) {
        return DeviceJson.nbdCounters(s);
    }

    /** A blk device's counters, the schema of {@code ctl} and of {@code serve blk}'s JSON statistics lines. */
    public static Map<String, Object> blkCounters(BlkStats.Snapshot s) {
        return DeviceJson.blkCounters(s);
    }

    /**
     * What a queue's worker did (the idle strategy's account), the schema of {@code ctl stats} and of {@code serve}'s
     * JSON statistics lines: batches run, sleeps (each cost the driver a kick), spin hits (sleeps saved by
     * polling), notifications lost to a full call eventfd.
     */
    public static Map<String, Object> workerCounters(QueueWorker.Totals t) {
        return DeviceJson.workerCounters(t);
    }

    /**
     * A switch port's counters, the schema of {@code ctl stats} and of {@code serve net}'s JSON statistics lines:
     * {@code port}, every {@link PortStat} by its label, and for a vhost-user port its transmit queues' workers
     * ({@code queues: [{queue: "tx0", worker}]}) then its receive queues' interrupts ({@code {queue: "rx0",
     * lost_notifications, recheck_interrupts}}); {@code st} is the snapshot of the port's counters to report.
     */
    public static Map<String, Object> portCounters(String id, io.iovirt.net.Port port, PortStats st) {
        return DeviceJson.portCounters(id, port, st);
    }

    // ---- views for metrics, libvirt and config reloads ----------------------------------------------------------

    List<BlkExport> blkExports() {
        synchronized (lock) {
            return List.copyOf(blks.values());
        }
    }

    /** Every switch with a copy of its ports, taken under the lock (net.port.add/remove change the maps). */
    Map<NetSwitch, List<NetSwitch.PortEntry>> switchPorts() {
        synchronized (lock) {
            Map<NetSwitch, List<NetSwitch.PortEntry>> m = new LinkedHashMap<>();
            for (NetSwitch n : nets.values()) {
                m.put(n, List.copyOf(n.ports.values()));
            }
            return m;
        }
    }

    /** Runs {@code action} with the device registry locked (a quick look: nothing slow may run under it). */
    <T> T locked(java.util.function.Supplier<T> action) {
        synchronized (lock) {
            return action.get();
        }
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

    private String nextId(String prefix, Map<String, ?> taken) {
        String id;
        int n = prefix.equals("blk") ? nextBlk : prefix.equals("net") ? nextNet : nextNbd;
        do {
            id = prefix + n++;
        } while (claims.taken(id) || taken.containsKey(id));
        if (prefix.equals("blk")) {
            nextBlk = n;
        } else if (prefix.equals("net")) {
            nextNet = n;
        } else {
            nextNbd = n;
        }
        return id;
    }

    /**
     * Stops every device: exports finish their in-flight requests and sync, switches close their ports; then waits
     * for removals still under way (their images are being flushed). Adds still under way close what they opened
     * themselves when they find the daemon stopping.
     */
    @Override
    public void close() {
        // one deadline for the whole stop, taken where it began (the signal: stopStarts), else now: the control
        // socket's and /metrics' close before this, and the exports' and switches' stops below (each can wait for a
        // stuck queue or port) count against it, so that the stop stays within the unit's TimeoutStopSec
        long deadline = stopStarts();
        List<BlkExport> b;
        List<NetSwitch> n;
        List<NbdExportEntry> nb;
        synchronized (lock) {
            state = null; // first: stopping is not removing, and a request finishing late must not save empty maps
            nb = new ArrayList<>(nbds.values());
            nbds.clear();
            b = new ArrayList<>(blks.values());
            n = new ArrayList<>(nets.values());
            blks.clear();
            nets.clear();
            for (NetSwitch s : n) {
                s.ports.clear();
            }
            claims.close(); // the running devices' claims go: they are closed below
        }
        opens.close(); // not waited for: named in the log
        // every export's close starts at once, each on a thread of its own (its server's stop waits a bounded time
        // for a stuck frontend session: one after another, several such would add up past the deadline; its image is
        // flushed and closed on a thread of its own too), then the stop waits for them together until the deadline:
        // a final flush on a file system that does not answer does not end
        Map<String, java.util.concurrent.CompletableFuture<ImageRelease.Closing>> closings = new LinkedHashMap<>();
        for (NbdExportEntry e : nb) {
            closings.put("nbd " + e.spec.id(), closeOnItsThread("nbd " + e.spec.id(), e));
        }
        for (BlkExport e : b) {
            closings.put("blk " + e.spec.id(), closeOnItsThread("blk " + e.spec.id(), e));
        }
        // the switches' closes too, each on a thread of its own (a port's close waits for its threads), along with the
        // exports', and waited for against the same deadline
        Map<String, java.util.concurrent.CompletableFuture<Void>> switches = new LinkedHashMap<>();
        for (NetSwitch s : n) {
            switches.put("net " + s.spec.id(), runOnItsThread("net " + s.spec.id() + " stop", s::close));
        }
        for (Map.Entry<String, java.util.concurrent.CompletableFuture<Void>> c : switches.entrySet()) {
            String left = awaitSwitch(c.getKey(), c.getValue(), deadline);
            if (left != null) {
                LOG.log(System.Logger.Level.ERROR, c.getKey() + ": stopping: " + left);
                leftAtStop.add(c.getKey());
            }
        }
        for (Map.Entry<String, java.util.concurrent.CompletableFuture<ImageRelease.Closing>> c : closings.entrySet()) {
            String notice = awaitClose(c.getValue(), deadline);
            if (notice != null) {
                LOG.log(System.Logger.Level.ERROR, c.getKey() + ": stopping: " + notice);
                leftAtStop.add(c.getKey());
            }
        }
        leftAtStop.addAll(claims.awaitRemovals(deadline));
    }

    /**
     * What the stop ({@link #close}) exited without waiting for — devices whose close had not ended by its deadline,
     * each named by an ERROR line; empty when every device stopped and every image was flushed and closed. What the
     * daemon's last words say (not "every image synced" when this is not empty).
     */
    public List<String> leftAtStop() {
        return List.copyOf(leftAtStop);
    }

    /** Runs {@code task} on a thread of its own (here if none can be started); completes when it has ended. */
    private static java.util.concurrent.CompletableFuture<Void> runOnItsThread(String name, Runnable task) {
        var done = new java.util.concurrent.CompletableFuture<Void>();
        Runnable run = () -> {
            try {
                task.run();
                done.complete(null);
            } catch (RuntimeException | Error ex) {
                done.completeExceptionally(ex);
            }
        };
        try {
            Thread.ofPlatform().name(name).daemon().start(run);
        } catch (RuntimeException | OutOfMemoryError ex) {
            run.run();
        }
        return done;
    }

    /**
     * Waits until {@code deadline} ({@link System#nanoTime}) for a switch's close begun by {@link #runOnItsThread}:
     * null when it ended; else what the daemon exits without.
     */
    private static String awaitSwitch(String who, java.util.concurrent.CompletableFuture<Void> closed, long deadline) {
        try {
            closed.get(Math.max(0, deadline - System.nanoTime()), java.util.concurrent.TimeUnit.NANOSECONDS);
            return null;
        } catch (java.util.concurrent.TimeoutException e) {
            return "its ports have not all stopped by the stop's deadline (a port's thread that does not end): the"
                    + " daemon exits without waiting for them; their frontends and TAP devices are let go of with the"
                    + " process";
        } catch (java.util.concurrent.ExecutionException e) {
            LOG.log(System.Logger.Level.ERROR, who + ": closing failed", e.getCause());
            return "closing failed (" + e.getCause() + ", trace above): its ports' frontends and TAP devices are let"
                    + " go of with the process";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return "interrupted while its ports stop";
        }
    }

    /** Starts {@code e}'s close ({@link Export#closeAsync}) on a thread of its own; here if none can be started. */
    private static java.util.concurrent.CompletableFuture<ImageRelease.Closing> closeOnItsThread(String who, Export e) {
        var started = new java.util.concurrent.CompletableFuture<ImageRelease.Closing>();
        Runnable close = () -> {
            try {
                started.complete(e.closeAsync());
            } catch (RuntimeException | Error ex) {
                started.completeExceptionally(ex);
            }
        };
        try {
            Thread.ofPlatform().name(who + " stop").daemon().start(close);
        } catch (RuntimeException | OutOfMemoryError ex) {
            close.run();
        }
        return started;
    }

    /**
     * Waits until {@code deadline} ({@link System#nanoTime}) for an export's close begun by {@link #closeOnItsThread}:
     * its server's stop, then its image's close. Null when it ended with its final flush; else what is left, as
     * {@link ImageRelease.Closing#awaitBeforeExit} says.
     */
    private static String awaitClose(
            java.util.concurrent.CompletableFuture<ImageRelease.Closing> started, long deadline) {
        ImageRelease.Closing c;
        try {
            c = started.get(Math.max(0, deadline - System.nanoTime()), java.util.concurrent.TimeUnit.NANOSECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            return "its server has not stopped (see the lines above): the daemon exits without the final flush of"
                    + " its image (its lock goes with the process): writes acknowledged before may not be on disk";
        } catch (java.util.concurrent.ExecutionException e) {
            return "stopping its server failed: " + e.getCause();
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            return "interrupted while its server stops";
        }
        return c.awaitBeforeExit(java.time.Duration.ofNanos(Math.max(0, deadline - System.nanoTime())));
    }
}
