// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import io.iovirt.linux.LinuxException;
import io.iovirt.storage.ImageLock;
import io.iovirt.util.AtomicFile;
import io.iovirt.util.Json;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.FileAlreadyExistsException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * The daemon's {@code --state} file (docs/api.md, "State file"): the devices added through the control API, so that
 * they survive a restart (a crash and systemd's Restart=, a watchdog restart, {@code systemctl restart}). It has the
 * configuration file's shape (an administrator can read it, or move an entry into the configuration), plus a
 * top-level {@code ports} list for ports added through the API to switches of the configuration file.
 *
 * <p>Written after every successful change through the API, as a whole ({@link AtomicFile}: a crash leaves the old
 * file or the new one), mode 0600. Read once at start, after the configuration file's devices, whose entries are
 * started as devices of the API. Owned by one daemon: an exclusive OFD lock on {@code FILE.lock} (taken before
 * anything starts, released by the kernel however the process ends) keeps a second daemon off it — two would
 * overwrite each other's devices.
 */
final class StateFile implements AutoCloseable {
    private static final System.Logger LOG = System.getLogger("io.iovirt.daemon");
    private static final java.util.Set<java.nio.file.attribute.PosixFilePermission> MODE =
            PosixFilePermissions.fromString("rw-------");

    private final Path file;
    private final ImageLock lock;
    /** Serializes writes: each takes its snapshot and writes it in one step, so the last write has the last state. */
    private final Object writes = new Object();
    /**
     * The file's entries that did not start at this daemon's start, as written in the file, by key ("blk:ID",
     * "nbd:ID", "net:ID" — a switch with its ports —, "port:NET/ID"): every write carries them forward, so an entry
     * whose cause is fixed later (an image on a file system mounted late) comes back at a next start however many
     * changes and restarts happened meanwhile. One leaves when the API uses its id (its device wins) or removes it.
     */
    private final Map<String, Carried> carried = new LinkedHashMap<>(); // guarded by writes

    /** A carried entry: its kind's list ("blk", "nbd", "net", "ports"), its id, its switch (a port), the entry. */
    private record Carried(String list, String id, String net, Map<String, Object> entry) {}
    /** Set by {@link #close}: once the lock is let go, a successor may own the file, so nothing is written. */
    private boolean closed; // guarded by writes

    private StateFile(Path file, ImageLock lock) {
        this.file = file;
        this.lock = lock;
    }

    /** Takes the state file's lock (refused, naming the holder, while another daemon has it). */
    static StateFile open(Path file) throws IOException {
        Path abs = realPath(file);
        Path dir = abs.getParent();
        if (Files.isDirectory(abs)) {
            throw new IOException("--state " + file + ": " + abs + " is a directory; give a file in it (e.g. "
                    + abs.resolve("daemon-state.json") + ")");
        }
        int owner = (Integer) Files.getAttribute(dir, "unix:uid");
        int self = io.iovirt.linux.SocketAccess.ownUid();
        java.util.Set<java.nio.file.attribute.PosixFilePermission> mode = Files.getPosixFilePermissions(dir);
        // Whoever can write in the directory can plant the file (devices the daemon would start, as its user: a disk
        // of any file it can open, served on a socket of the planter's choosing) or its .lock: only the daemon's user
        // or root may own it, and nobody else write it — a sticky /tmp included, where the names can be taken first.
        if ((owner != self && owner != 0)
                || mode.contains(java.nio.file.attribute.PosixFilePermission.GROUP_WRITE)
                || mode.contains(java.nio.file.attribute.PosixFilePermission.OTHERS_WRITE)) {
            throw new IOException("--state " + file + ": its directory " + dir + " (mode "
                    + PosixFilePermissions.toString(mode) + ", uid " + owner + ") can be written by others than the"
                    + " daemon's user (uid " + self + ") and root: anyone who can write there could plant "
                    + abs.getFileName() + " (devices the daemon would start) or its .lock; put the state file in a"
                    + " directory of the daemon's user that only it can write (iovirt.service's StateDirectory=iovirt"
                    + " makes /var/lib/iovirt), e.g. chown it to the daemon's user and chmod go-w it");
        }
        Path lockFile = abs.resolveSibling(abs.getFileName() + ".lock");
        try {
            Files.createFile(lockFile, PosixFilePermissions.asFileAttribute(MODE));
        } catch (FileAlreadyExistsException e) {
            // left by an earlier daemon: the lock on it is what counts, not the file
        } catch (IOException e) {
            throw new IOException("--state " + file + ": cannot create its lock file " + lockFile + ": " + e
                    + "; the daemon's user must be able to write in " + dir);
        }
        ImageLock l = ImageLock.open(lockFile, false);
        String refused;
        try {
            refused = l.acquire();
        } catch (LinuxException e) {
            l.close();
            throw new IOException("--state " + file + ": cannot lock " + lockFile + " (" + e.getMessage()
                    + "), which keeps a second daemon off the state file; put it on a local file system");
        }
        if (refused != null) {
            String holders = l.holders();
            l.close();
            throw new IOException("state file " + file + " is in use by " + holders + ", which holds " + lockFile
                    + ": two daemons on one state file would overwrite each other's devices; stop the other daemon,"
                    + " or give this one a --state of its own");
        }
        try (var files = Files.list(dir)) {
            for (Path p : files.filter(p -> AtomicFile.isLeftover(abs, p)).toList()) {
                Files.deleteIfExists(p); // a write cut short by a crash (we hold the lock: no writer is live)
            }
        } catch (IOException e) {
            LOG.log(System.Logger.Level.WARNING, "state file " + file + ": cannot remove old temporary files: " + e);
        }
        return new StateFile(abs, l);
    }

    /**
     * The file {@code file} names as the file system sees it: its directory's real path and its own name, symbolic
     * links to it followed (also to a file not created yet). The lock, the temporary files and their cleanup all
     * use it, so two daemons given different names for one file (a link, a path through a linked directory) still
     * meet on one lock.
     */
    static Path realPath(Path file) throws IOException {
        Path p = file.toAbsolutePath();
        for (int links = 0; ; links++) {
            Path name = p.getFileName();
            Path parent = p.getParent();
            if (name == null
                    || parent == null
                    || name.toString().equals(".")
                    || name.toString().equals("..")) {
                throw new IOException("--state " + file + ": names a directory, not a file; give a file (e.g."
                        + " /var/lib/iovirt/daemon-state.json)");
            }
            Path real;
            try {
                real = parent.toRealPath().resolve(name);
            } catch (NoSuchFileException e) {
                throw new IOException("--state " + file + ": the directory " + parent + " does not exist; create it"
                        + " (iovirt.service's StateDirectory=iovirt makes /var/lib/iovirt)");
            }
            if (!Files.isSymbolicLink(real)) {
                return real;
            }
            if (links == 40) {
                throw new IOException("--state " + file + ": too many levels of symbolic links; point it at the file");
            }
            p = real.getParent().resolve(Files.readSymbolicLink(real));
        }
    }

    Path path() {
        return file;
    }

    /**
     * Reads and checks the whole file: none yet is no devices. A file that cannot be read or is not valid stops the
     * daemon before it starts anything, and is left as it is (it may be the only record of the guests' disks).
     */
    ConfigFile.Desired read(Daemon d) throws IOException {
        String keep = "; the daemon did not start and left the file as it is: repair it (it has the shape of the"
                + " configuration file, docs/api.md \"State file\"), or move it away (mv " + file + " " + file
                + ".broken) to start without the devices it lists";
        String text;
        try {
            text = Files.readString(file);
        } catch (NoSuchFileException e) {
            return new ConfigFile.Desired(
                    Map.of(), java.util.Set.of(), Map.of(), Map.of(), Map.of(), Map.of(), Map.of(), null);
        } catch (java.nio.charset.MalformedInputException e) {
            throw new IOException(
                    "state file " + file + " is not UTF-8 text (" + ConfigFile.notUtf8(file) + ")" + keep, e);
        } catch (IOException e) {
            throw new IOException("cannot read state file " + file + ": " + e + keep, e);
        }
        ConfigFile.Desired want;
        try {
            want = ConfigFile.parse(text, "state file", file, d);
        } catch (IOException e) {
            throw new IOException(e.getMessage() + keep, e);
        }
        return want;
    }

    /**
     * Starts the file's devices as devices of the API (after the configuration file's): one that fails is logged
     * with its reason and the others still start. The file is not rewritten now, and an entry that failed (its image
     * on a file system not mounted yet, its socket's directory missing) is carried forward into every later write
     * until it starts at a next start, the API adds a device with its id, or the API removes it.
     *
     * @return the entries that did not start, each with its reason
     */
    List<String> restore(Daemon d, ConfigFile.Desired want) {
        List<String> failed = new ArrayList<>();
        List<String> started = new ArrayList<>();
        for (BlkExport.Spec s : want.blks().values()) {
            boolean roNow = want.blksReadOnlyNow().contains(s.id());
            if (ConfigFile.run(failed, "blk " + s.id(), () -> d.addBlk(s, false, roNow))) {
                started.add("blk " + s.id());
            } else {
                carry(new Carried("blk", s.id(), null, ConfigFile.blkEntry(s, roNow)));
            }
        }
        for (NbdExportEntry.Spec s : want.nbds().values()) {
            if (ConfigFile.run(failed, "nbd " + s.id(), () -> d.addNbd(s, false))) {
                started.add("nbd " + s.id());
            } else {
                carry(new Carried("nbd", s.id(), null, ConfigFile.nbdEntry(s)));
            }
        }
        Map<String, Map<String, NetSwitch.PortSpec>> ports = new LinkedHashMap<>(want.ports());
        ports.putAll(want.switchPorts());
        for (Map.Entry<String, Map<String, NetSwitch.PortSpec>> e : ports.entrySet()) {
            String net = e.getKey();
            NetSwitch.Spec spec = want.nets().get(net);
            NetSwitch[] sw = new NetSwitch[1];
            if (spec != null) {
                if (!ConfigFile.run(failed, "net " + net, () -> sw[0] = d.addNet(spec, false))) {
                    for (String port : e.getValue().keySet()) {
                        failed.add("port " + net + "/" + port + ": its switch did not start");
                    }
                    carry(new Carried(
                            "net",
                            net,
                            null,
                            ConfigFile.netEntry(spec, List.copyOf(e.getValue().values()))));
                    continue;
                }
                started.add("net " + net);
            } else {
                sw[0] = d.locked(() -> d.netsLocked().get(net));
                NetSwitch.Spec recorded = want.portSwitches().get(net);
                if (sw[0] == null
                        && recorded != null
                        && ConfigFile.run(failed, "net " + net, () -> sw[0] = d.addNet(recorded, false))) {
                    // the configuration file no longer defines it: its API ports keep it, as a switch of the API
                    started.add("net " + net + " (as its ports' entries recorded it)");
                }
                if (sw[0] == null) {
                    for (NetSwitch.PortSpec ps : e.getValue().values()) {
                        failed.add("port " + net + "/" + ps.id() + ": there is no switch '" + net
                                + "' (the configuration file no longer defines it)");
                        carry(new Carried(
                                "ports",
                                ps.id(),
                                net,
                                recorded == null
                                        ? ConfigFile.portEntry(net, ps)
                                        : ConfigFile.switchPortEntry(recorded, ps)));
                    }
                    continue;
                }
            }
            for (NetSwitch.PortSpec ps : e.getValue().values()) {
                if (ConfigFile.run(failed, "port " + net + "/" + ps.id(), () -> d.addPort(sw[0], ps, false))) {
                    started.add("port " + net + "/" + ps.id());
                } else {
                    carry(new Carried("ports", ps.id(), net, ConfigFile.switchPortEntry(sw[0].spec, ps)));
                }
            }
        }
        if (failed.isEmpty()) {
            LOG.log(System.Logger.Level.INFO, "state file " + file + ": restored " + started);
        } else {
            LOG.log(
                    System.Logger.Level.WARNING,
                    "state file " + file + ": restored " + started + "; did not start: " + failed + ". They stay"
                            + " in the file (every write keeps them) until they start at a next start, or the API"
                            + " adds a device with their id or removes them");
        }
        return failed;
    }

    private void carry(Carried c) {
        synchronized (writes) {
            carried.put(key(c.list(), c.net(), c.id()), c);
        }
    }

    private static String key(String list, String net, String id) {
        return list.equals("ports") ? "port:" + net + "/" + id : list + ":" + id;
    }

    /**
     * The API removed {@code what} ("blk", "nbd", "net": by {@code id}; "port": port {@code id} of switch
     * {@code net}), or tried to and found no such device: the carried entry of that name goes too (a switch's with
     * its carried ports), so that a remove also takes out what only the file still lists.
     *
     * @return true when there was such a carried entry
     */
    boolean forget(String what, String net, String id) {
        synchronized (writes) {
            if (what.equals("port")) {
                return carried.remove(key("ports", net, id)) != null;
            }
            boolean had = carried.remove(key(what, null, id)) != null;
            if (what.equals("net")) {
                had |= carried.values()
                        .removeIf(c -> c.list().equals("ports") && c.net().equals(id));
            }
            return had;
        }
    }

    /**
     * Adds the carried entries to {@code now} (what runs), dropping for good each whose id the API's devices now use
     * (its device wins): a disk, NBD export or switch by id (one namespace), a port by its switch and id.
     */
    @SuppressWarnings("unchecked")
    private void addCarried(Map<String, Object> now) {
        java.util.Set<String> ids = new java.util.HashSet<>();
        Map<String, Map<String, Object>> switches = new LinkedHashMap<>();
        for (String list : List.of("blk", "nbd", "net")) {
            for (Object o : (List<Object>) now.get(list)) {
                Map<String, Object> m = (Map<String, Object>) o;
                ids.add((String) m.get("id"));
                if (list.equals("net")) {
                    switches.put((String) m.get("id"), m);
                }
            }
        }
        java.util.Set<String> ports = new java.util.HashSet<>();
        for (Object o : (List<Object>) now.get("ports")) {
            Map<String, Object> m = (Map<String, Object>) o;
            ports.add(m.get("net") + "/" + m.get("id"));
        }
        for (var it = carried.values().iterator(); it.hasNext(); ) {
            Carried c = it.next();
            if (!c.list().equals("ports")) {
                if (ids.contains(c.id())) {
                    it.remove();
                } else {
                    ((List<Object>) now.get(c.list())).add(c.entry());
                }
                continue;
            }
            Map<String, Object> sw = switches.get(c.net());
            if (sw != null) { // a switch of the API now: the port goes in its list, as a port the API added to it
                List<Object> own = (List<Object>) sw.get("ports");
                if (own.stream().anyMatch(p -> c.id().equals(((Map<String, Object>) p).get("id")))) {
                    it.remove();
                } else {
                    Map<String, Object> entry = new LinkedHashMap<>(c.entry());
                    entry.remove("net");
                    entry.remove(ConfigFile.SWITCH);
                    own.add(entry);
                }
            } else if (ports.contains(c.net() + "/" + c.id())) {
                it.remove();
            } else {
                ((List<Object>) now.get("ports")).add(c.entry());
            }
        }
    }

    /**
     * Writes what the API's devices are now (called after each successful change; not under the registry lock).
     * Writes nothing once the daemon is stopping or this file is closed: the stop empties the registry without
     * removing anything, and after {@link #close} the file may be a successor's.
     *
     * @return false when nothing was written for that reason
     */
    boolean save(Daemon d) throws IOException {
        synchronized (writes) {
            if (closed) {
                return false;
            }
            Map<String, Object> now = d.locked(() -> d.apiDevicesLocked(this));
            if (now == null) {
                return false;
            }
            addCarried(now);
            String text = Json.write(now) + "\n";
            try {
                AtomicFile.replace(file, text.getBytes(StandardCharsets.UTF_8), StateFile::mode);
            } catch (IOException e) {
                throw new IOException("cannot write state file " + file + ": " + e, e);
            }
            return true;
        }
    }

    private static void mode(Path temp) throws IOException {
        Files.setPosixFilePermissions(temp, MODE); // the devices' images and sockets are the daemon's business only
    }

    /** Lets go of the lock (after the devices stopped: a next daemon must not start them while these still run). */
    @Override
    public void close() {
        synchronized (writes) {
            closed = true; // under writes: a write under way finishes first, none starts after
        }
        lock.close();
    }
}
