// SPDX-License-Identifier: Apache-2.0
package io.iovirt.net;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;

/**
 * An L2 learning switch: frames are forwarded by destination MAC to the port that address was learned on, flooded
 * to every other port whose link is up when the destination is a group address or unknown, and never sent back out
 * of the port they came from.
 *
 * <p>Threading, and why. Each port receives on its own platform thread(s) and forwards the frame on that thread, run
 * to completion, like the Linux bridge in its receive softirq: validate, learn, look up, and copy the frame straight
 * into the destination (a socket write, a TAP write, guest receive buffers). There is no hand-off queue, no
 * forwarding thread and no lock shared by all ports: the MAC table is lock-free for lookups and refreshes
 * ({@link MacTable}), the port array is copy-on-write, and each destination serializes only its own transmit path.
 * The alternative — one forwarding thread fed by per-port queues — costs a queue hand-off and usually a thread
 * wake-up (an eventfd write plus epoll return, measured at ~3 µs here, see JAVA25-FFM.md) per burst, adds a second
 * copy or buffer ownership transfer, and caps the whole switch at one core. Measured (NetPathBench, one thread, CPU
 * time): taking a 64-byte frame from a guest ring, checking it and deciding (learn, look up) costs ~20–30 ns on top
 * of the ring work; delivering it into another guest's ring, both copies and the interrupt included, ~170 ns more —
 * a wake-up per burst of 32 would add ~100 ns per frame to that. Two ingress threads sending to the same destination
 * do contend on that destination's lock, which is the same serialization a NIC queue imposes.
 *
 * <p>The data path allocates nothing: frames arrive as windows onto buffers each port preallocated, counters are
 * plain per-writer stores, and the clock the MAC table needs is a field advanced by {@link #tick}, not a system call
 * per frame. Destinations may defer per-burst work (a guest interrupt) until the ingress thread ends its burst
 * ({@link Ingress}), so a burst of frames costs one notification, not one per frame.
 */
public final class Switch implements AutoCloseable {
    public static final int DEFAULT_MAC_AGING_SECONDS = 300;
    public static final int DEFAULT_MAC_CAPACITY = 8192;
    /**
     * Learned addresses per port. A guest port normally has one; a guest that bridges containers or nested guests a
     * few dozen. Linux's bridge has no limit by default ({@code fdb_max_learned} 0) and OVS only a table-wide one
     * ({@code mac-table-size}, 2048): with 256 per port, 32 ports spraying at once are needed to fill the table.
     */
    public static final int DEFAULT_MACS_PER_PORT = 256;

    private final RateLimitedLog spoofLog = new RateLimitedLog(5000);
    private final RateLimitedLog learnLog = new RateLimitedLog(5000);

    /**
     * @param mtu              largest payload (frames may add the Ethernet header and one VLAN tag)
     * @param macAgingSeconds  how long an address is remembered after its last frame
     * @param macTableCapacity most addresses learned at once
     * @param macsPerPort      most addresses learned on one port at once (a pinned port only ever learns its own)
     */
    public record Config(int mtu, int macAgingSeconds, int macTableCapacity, int macsPerPort) {
        public Config {
            if (mtu < Ethernet.MIN_MTU || mtu > Ethernet.MAX_MTU) {
                throw new IllegalArgumentException(
                        "MTU must be " + Ethernet.MIN_MTU + ".." + Ethernet.MAX_MTU + ": " + mtu);
            }
            if (macAgingSeconds < 1) {
                throw new IllegalArgumentException("MAC aging time must be at least 1 second: " + macAgingSeconds);
            }
            if (macsPerPort < 1 || macsPerPort > macTableCapacity) {
                throw new IllegalArgumentException(
                        "MAC addresses per port must be 1.." + macTableCapacity + ": " + macsPerPort);
            }
        }

        public static Config defaults() {
            return new Config(
                    Ethernet.DEFAULT_MTU, DEFAULT_MAC_AGING_SECONDS, DEFAULT_MAC_CAPACITY, DEFAULT_MACS_PER_PORT);
        }

        public Config withMtu(int m) {
            return new Config(m, macAgingSeconds, macTableCapacity, macsPerPort);
        }

        public Config withMacAging(int seconds) {
            return new Config(mtu, seconds, macTableCapacity, macsPerPort);
        }

        public Config withMacTable(int capacity, int perPort) {
            return new Config(mtu, macAgingSeconds, capacity, perPort);
        }
    }

    private final Config config;
    private final int maxFrame;
    private final MacTable macs;
    /** Port number → port (null once removed). Copy-on-write: forwarding reads it without a lock. */
    private volatile Port[] ports = new Port[0];
    /**
     * The addresses pinned ports own ({@link Port#pinnedSource}) and which port owns each (same index). No other port
     * may send from one of them: the switch would move the address to the sender, and the pinned guest's traffic with
     * it. Replaced whole when a pinned port comes or goes; without pinned ports a frame pays one length check.
     */
    private record Pins(long[] macs, int[] owners) {
        static final Pins NONE = new Pins(new long[0], new int[0]);

        /** The port that pinned {@code mac}, or -1. */
        int owner(long mac) {
            for (int k = 0; k < macs.length; k++) {
                if (macs[k] == mac) {
                    return owners[k];
                }
            }
            return -1;
        }
    }

    private volatile Pins pins = Pins.NONE;
    /** Seconds since the switch started, advanced by {@link #tick}. */
    private volatile int now;

    private final long startNanos = System.nanoTime();
    private volatile boolean closed;
    private Thread housekeeper;
    /**
     * Ports {@link #removePort} took out, or {@link #close} is closing, whose close has not returned yet, by number
     * (guarded by this switch). Their numbers and names stay reserved meanwhile: a frame the port's receive thread
     * was forwarding as it was taken out may still learn an address under its number, forgotten only once the port
     * has stopped; and a port with the same name is the same transport (a vhost-user socket path, a TAP device)
     * still held by the closing port. A removal of a port here returns when its close has.
     */
    private final Map<Integer, Port> closing = new HashMap<>();
    /**
     * Ports {@link #addPort} has published and is starting outside this switch's lock (guarded by it). The switch's
     * close leaves them to their add, which takes each out and closes it once its start has returned, and waits
     * for that: a port's close never runs concurrently with its start.
     */
    private final Set<Port> starting = Collections.newSetFromMap(new IdentityHashMap<>());

    public Switch(Config config) {
        this.config = Objects.requireNonNull(config);
        this.maxFrame = Ethernet.maxFrame(config.mtu());
        this.macs = new MacTable(config.macTableCapacity(), config.macAgingSeconds(), config.macsPerPort());
    }

    public Config config() {
        return config;
    }

    public int mtu() {
        return config.mtu();
    }

    public MacTable macTable() {
        return macs;
    }

    /** The switch clock in seconds (what MAC ages are measured in). */
    public int now() {
        return now;
    }

    /**
     * Starts the thread that advances the clock and ages the MAC table twice a second. Without it (unit tests) the
     * clock moves only through {@link #tick}.
     */
    public synchronized Switch startHousekeeping() {
        if (housekeeper == null) {
            housekeeper = Thread.ofPlatform()
                    .daemon()
                    .name("switch-housekeeping")
                    .start(() -> {
                        while (!closed) {
                            tick((int) ((System.nanoTime() - startNanos) / 1_000_000_000L));
                            try {
                                Thread.sleep(500);
                            } catch (InterruptedException e) {
                                return;
                            }
                        }
                    });
        }
        return this;
    }

    /** Sets the clock to {@code seconds} (never backwards) and forgets addresses older than the aging time. */
    public void tick(int seconds) {
        if (seconds > now) {
            now = seconds;
        }
        macs.age(now);
    }

    /**
     * Adds and starts a port. It takes its number, name and pinned address under this switch's lock and starts
     * outside it ({@link #starting}): a start reaches the file system (a socket path, a TAP device) the caller chose,
     * and the other ports' adds and removals do not wait for that. A port whose start fails, or whose switch was
     * closed meanwhile, is taken out and closed again before this throws.
     *
     * @throws IOException the port could not start (its socket path is taken, its TAP cannot be opened...)
     * @throws IllegalStateException the switch is closed, or was closed while the port started
     */
    public <P extends Port> P addPort(P port) throws IOException {
        synchronized (this) {
            reserve(port);
        }
        Throwable failed = null;
        try {
            port.start();
        } catch (IOException | RuntimeException | Error e) {
            failed = e;
        }
        boolean fails;
        boolean ours;
        synchronized (this) {
            starting.remove(port);
            fails = failed != null || closed;
            ours = fails && takeOut(port); // in one step: a close waiting for both sees the port in one of them
            notifyAll();
        }
        if (!fails) {
            return port;
        }
        try {
            port.close();
        } catch (RuntimeException | Error e) {
            if (failed != null) {
                failed.addSuppressed(e);
            } else {
                failed = e;
            }
        } finally {
            if (ours) {
                removed(port);
            }
        }
        if (failed == null) {
            throw new IllegalStateException("the switch was closed while port " + port.name() + " started");
        }
        if (failed instanceof IOException e) {
            throw e;
        }
        if (failed instanceof RuntimeException e) {
            throw e;
        }
        throw (Error) failed;
    }

    /** Checks {@code port} can join and publishes it with its number, as {@link #starting}; guarded by this switch. */
    private void reserve(Port port) {
        if (closed) {
            throw new IllegalStateException("switch is closed");
        }
        Port[] cur = ports;
        int number = cur.length; // the lowest free number: a daemon adds and removes ports for as long as it runs
        for (int i = 0; i < cur.length; i++) {
            Port p = cur[i];
            if (p == null) {
                if (!closing.containsKey(i)) {
                    number = Math.min(number, i);
                }
            } else if (p.name().equals(port.name())) {
                throw new IllegalArgumentException("the switch already has a port " + port.name());
            }
        }
        for (Port p : closing.values()) {
            if (p.name().equals(port.name())) {
                throw new IllegalArgumentException("port " + port.name() + " is still being removed (its threads are"
                        + " stopping and it still holds its transport); add it again once its removal has returned");
            }
        }
        if (number >= MacTable.MAX_PORTS) {
            throw new IllegalStateException("the switch has the maximum of " + MacTable.MAX_PORTS + " ports");
        }
        long pin = port.pinnedSource();
        int pinOwner = pin == -1 ? -1 : pins.owner(pin);
        if (pinOwner >= 0) {
            throw new IllegalArgumentException("port " + cur[pinOwner].name() + " is already pinned to "
                    + Mac.toString(pin) + "; two ports cannot own one address");
        }
        port.attach(this, number);
        Port[] next = Arrays.copyOf(cur, Math.max(cur.length, number + 1));
        next[number] = port;
        ports = next;
        if (pin != -1) {
            long[] pm = Arrays.copyOf(pins.macs(), pins.macs().length + 1);
            int[] po = Arrays.copyOf(pins.owners(), pins.owners().length + 1);
            pm[pm.length - 1] = pin;
            po[po.length - 1] = number;
            pins = new Pins(pm, po);
            macs.learn(pin, number, now); // the address is the pinned port's from the start, not whoever sent first
        }
        starting.add(port);
    }

    /**
     * Stops a port and forgets its addresses; its number goes to the next port added once it has stopped. It is
     * taken out under this switch's lock (no frame is forwarded to it after that) and closed outside it: a port's
     * close may wait for its threads (a vhost-user port up to its transmit workers' stop limit), and the other
     * ports' adds and removals do not wait for that. Until the close has returned the port's number and name stay
     * reserved ({@link #closing}): adding a port with that name is refused, saying so, rather than handing it the
     * transport the old one still holds. The addresses are forgotten again once the port has stopped: a frame its
     * receive thread was forwarding while it was taken out could have learned one after the first flush, and the
     * next port with this number would get that station's frames. A removal of a port being removed, or being
     * closed by {@link #close} (a port's removal racing its switch's), returns when that close has: a caller that
     * releases what the port held once this returns (the daemon frees its socket path and TAP name) does not release
     * it while the port still holds it (a port's second close returns at once). A removal of a port still starting
     * ({@link #addPort} published it) waits for the start to return first: its close must not run during it.
     */
    public void removePort(Port port) {
        boolean ours;
        synchronized (this) {
            // A port still starting is left to its add (its close must not run during its start): wait for that.
            awaitRemovals(() -> !starting.contains(port));
            if (closing.get(port.index()) == port) { // first: one the switch's close is closing is still in the table
                awaitRemovals(() -> closing.get(port.index()) != port);
                return;
            }
            ours = takeOut(port);
        }
        try {
            port.close();
        } finally {
            if (ours) {
                removed(port);
            }
        }
    }

    /**
     * Takes {@code port} out of the table (no frame is forwarded to it after that) and reserves its number and name
     * in {@link #closing} until {@link #removed}; false when it is not in the table. Guarded by this switch.
     */
    private boolean takeOut(Port port) {
        boolean ours = removeSlot(port);
        if (ours) {
            closing.put(port.index(), port);
        }
        return ours;
    }

    /** The close of a port {@link #takeOut} took out has returned: its number and name are free again. */
    private synchronized void removed(Port port) {
        macs.flushPort(port.index()); // no port has the number yet: it was reserved until now
        closing.remove(port.index());
        notifyAll(); // a close of the switch waits for the removals under way
    }

    /**
     * Waits, holding this switch's lock (released while waiting), until {@code done} says the removals it waits for
     * have returned; each removal's close is bounded (its threads' stop limit). An interrupt is kept for the caller.
     */
    private void awaitRemovals(java.util.function.BooleanSupplier done) {
        boolean interrupted = false;
        while (!done.getAsBoolean()) {
            try {
                wait();
            } catch (InterruptedException e) {
                interrupted = true;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
        }
    }

    /**
     * Forgets the addresses of {@code port}, whose peer went away. Not when the port was removed already (its
     * addresses were forgotten then): its number may be another port's now. No lock: it runs on the port's thread,
     * which {@link #removePort} may be waiting for.
     */
    void peerGone(Port port) {
        if (present(port, ports)) {
            macs.flushPort(port.index());
        }
    }

    /** Takes {@code port} out of the forwarding array and forgets its addresses; false when it is not ours. */
    private boolean removeSlot(Port port) {
        Port[] next = ports.clone();
        int i = port.index();
        if (i < 0 || i >= next.length || next[i] != port) {
            return false;
        }
        next[i] = null;
        ports = next;
        Pins p = pins;
        int keep = 0;
        for (int owner : p.owners()) {
            keep += owner == i ? 0 : 1;
        }
        if (keep != p.owners().length) {
            long[] pm = new long[keep];
            int[] po = new int[keep];
            for (int k = 0, j = 0; k < p.owners().length; k++) {
                if (p.owners()[k] != i) {
                    pm[j] = p.macs()[k];
                    po[j++] = p.owners()[k];
                }
            }
            pins = new Pins(pm, po);
        }
        macs.flushPort(i);
        return true;
    }

    private String nameOf(int index) {
        Port[] all = ports;
        return index < all.length && all[index] != null ? all[index].name() : "port #" + index;
    }

    /**
     * {@link #macTableOvercommit(int, int, int, int)} for this switch's ports now. No lock: it reads the port array
     * once (a pinned port counts as such from before it is attached), so a front end may ask while another thread
     * adds or removes a port.
     */
    public String macTableOvercommit() {
        int count = 0;
        int pinned = 0;
        for (Port p : ports) {
            if (p != null) {
                count++;
                pinned += p.pinnedSource() == -1 ? 0 : 1;
            }
        }
        return macTableOvercommit(count, pinned, config.macsPerPort(), config.macTableCapacity());
    }

    /**
     * The warning when the ports' shares of the MAC table add up to more than it holds, or null. Each port may hold
     * {@code perPort} addresses (a pinned one only its own), so that many ports spraying source addresses (a guest
     * generating them, or bridging a network that has them) fill the table, after which every address new to the
     * switch goes unlearned and frames to it are flooded to every port: the other guests' traffic to a newcomer
     * (a guest that just started, a migrated one) reaches everyone. The remedies it names are the ones every front
     * end has (the per-port share is {@code macs-per-port} in {@code serve net} and the daemon alike); a front end
     * that can pin a port to its guest's address adds how.
     */
    public static String macTableOvercommit(int ports, int pinned, int perPort, int capacity) {
        int open = ports - pinned;
        long most = (long) open * perPort + pinned;
        if (most <= capacity) {
            return null;
        }
        long fill = Math.max(1, ((long) capacity - pinned + perPort - 1) / perPort);
        long fits = open == 0 ? 0 : ((long) capacity - pinned) / open;
        String remedy = fits >= 1
                ? "set macs-per-port to " + fits + " or less (" + (capacity - pinned) + " entries shared by " + open
                        + (pinned > 0 ? " unpinned" : "") + " ports), or split the ports between switches"
                : "the ports outnumber the table's entries: split them between switches";
        return "MAC table overcommitted: " + ports + " ports" + (pinned > 0 ? " (" + pinned + " pinned)" : "")
                + " may learn up to " + perPort + " source addresses each (macs-per-port), " + most
                + " in all, more than the table's " + capacity + ": " + fill + " ports spraying source addresses"
                + " fill it, and then addresses new to the switch are not learned and frames to them are flooded to"
                + " every port; " + remedy;
    }

    /** The ports in number order. */
    public List<Port> ports() {
        List<Port> out = new ArrayList<>();
        for (Port p : ports) {
            if (p != null) {
                out.add(p);
            }
        }
        return out;
    }

    /**
     * Whether {@code in} is still this switch's port: a removed port whose thread still delivers (it is being
     * stopped, or its stop gave up) is dropped without learning, since its number may already be another port's.
     */
    private static boolean present(Port in, Port[] ps) {
        int i = in.index();
        return i < ps.length && ps[i] == in;
    }

    /** {@link #classify} outcomes other than a port number: the frame was dropped (counted), or is to be flooded. */
    private static final int DROP = -1;

    private static final int FLOOD = MacTable.MAX_PORTS + 1;
    /** {@link #classify} flag: a frame with the same addresses later in the same burst gets the same outcome. */
    private static final int SAME_FOR_SAME_ADDRESSES = 1 << 20;
    /** {@link #classify} flag: flooded because the destination is a group address. */
    private static final int GROUP = 1 << 21;

    private static final int OUTCOME = SAME_FOR_SAME_ADDRESSES - 1;

    /**
     * Forwards one frame received on {@code in}; runs on the receiving thread. {@code frame} only needs to stay
     * valid until this returns.
     */
    void forward(Port in, Ingress ingress, Frame frame) {
        Port[] ps = ports;
        if (!present(in, ps)) {
            return;
        }
        int c = classify(in, ingress, frame, now, ps);
        int out = c == DROP ? DROP : c & OUTCOME;
        if (out == FLOOD) {
            flood(in.index(), ps, frame, ingress);
        } else if (out != DROP) {
            Port p = ps[out];
            p.transmit(frame);
            ingress.touch(p);
        }
    }

    /**
     * Forwards a burst of frames received on {@code in}; runs on the receiving thread. Each frame is checked, learned
     * from and looked up in order, as {@link #forward(Port, Ingress, Frame)} would; then each destination gets its
     * frames with one {@link Port#transmit(Burst, int, int)} call, in their order. A flooded frame (group or unknown
     * destination) goes to every other port whose link is up, in its place among the frames that port gets: floods
     * are grouped like unicast, so a burst of frames to an address nobody has announced yet costs one call per port,
     * not one pass over the ports per frame.
     *
     * <p>A frame with the same source and destination as the one before it in the burst (the usual case: a burst
     * is mostly one flow) skips what depends only on those addresses, once the earlier frame passed: the source
     * checks (same source, same verdict), learning (the earlier frame just learned or refreshed that source on this
     * port at this second) and the lookup (same address, same second, same port array). Its length is still checked
     * and it is counted like any frame (a run of such frames with one add per counter when the run ends). The
     * addresses compared are the ones the burst read when each frame was appended ({@link Burst#source},
     * {@link Burst#destination}). A source that could not be learned is tried again with every frame.
     */
    void forward(Port in, Ingress ingress, Burst burst) {
        Port[] ps = ports;
        if (!present(in, ps)) {
            return;
        }
        int t = now;
        int n = burst.size();
        Counters rx = ingress.counters();
        long lastSrc = 0;
        long lastDst = 0;
        int last = DROP; // the previous frame's outcome, when a frame with the same addresses may reuse it
        int sameFrames = 0; // frames that reused it since it was decided, counted when the run ends
        long sameBytes = 0;
        boolean floods = false;
        for (int i = 0; i < n; i++) {
            int len = burst.length(i);
            int out;
            if (last != DROP
                    && len >= Ethernet.HEADER
                    && len <= maxFrame
                    && burst.source(i) == lastSrc
                    && burst.destination(i) == lastDst) {
                sameFrames++;
                sameBytes += len;
                out = last & OUTCOME;
            } else {
                if (sameFrames > 0) {
                    countRun(rx, last, sameFrames, sameBytes);
                    sameFrames = 0;
                    sameBytes = 0;
                }
                int c = classify(in, ingress, burst.frame(i), t, ps);
                out = c == DROP ? DROP : c & OUTCOME;
                if (c != DROP && (c & SAME_FOR_SAME_ADDRESSES) != 0) {
                    last = c;
                    lastSrc = burst.source(i);
                    lastDst = burst.destination(i);
                } else {
                    last = DROP;
                }
            }
            if (out == FLOOD) {
                burst.flooded[i] = true;
                floods = true;
            } else if (out != DROP) {
                burst.destination[i] = ps[out];
            }
        }
        if (sameFrames > 0) {
            countRun(rx, last, sameFrames, sameBytes);
        }
        if (floods) {
            deliverWithFloods(burst, n, in.index(), ps, ingress);
        } else {
            deliver(burst, n, ingress);
        }
    }

    /**
     * Counts {@code frames} frames of {@code bytes} that reused the decision {@code outcome} of the frame before them
     * as {@link #classify} would have counted each: received, and multicast or flooded as that decision was.
     */
    private static void countRun(Counters rx, int outcome, int frames, long bytes) {
        rx.add(PortStat.RX_PACKETS, frames);
        rx.add(PortStat.RX_BYTES, bytes);
        if ((outcome & GROUP) != 0) {
            rx.add(PortStat.RX_MULTICAST, frames);
        }
        if ((outcome & OUTCOME) == FLOOD) {
            rx.add(PortStat.RX_FLOODED, frames);
        }
    }

    /** Hands each destination among the burst's {@code n} frames its frames, in order, with one call. */
    private static void deliver(Burst b, int n, Ingress ingress) {
        Port[] dst = b.destination;
        int[] order = b.order;
        for (int i = 0; i < n; i++) {
            Port p = dst[i];
            if (p == null) {
                continue; // dropped, or already handed over with an earlier frame for the same port
            }
            int m = 0;
            order[m++] = i;
            dst[i] = null;
            for (int j = i + 1; j < n; j++) {
                if (dst[j] == p) {
                    order[m++] = j;
                    dst[j] = null;
                }
            }
            p.transmit(b, 0, m);
            ingress.touch(p);
        }
    }

    /**
     * As {@link #deliver}, for a burst with flooded frames: each port but {@code self} gets, in order, the frames
     * addressed to it and, if its link is up, the flooded ones — one call per port that gets any.
     */
    private static void deliverWithFloods(Burst b, int n, int self, Port[] ps, Ingress ingress) {
        Port[] dst = b.destination;
        boolean[] flooded = b.flooded;
        int[] order = b.order;
        for (int k = 0; k < ps.length; k++) {
            Port p = ps[k];
            if (k == self || p == null) {
                continue;
            }
            boolean up = p.isLinkUp();
            int m = 0;
            for (int i = 0; i < n; i++) {
                if (dst[i] == p || (up && flooded[i])) {
                    order[m++] = i;
                }
            }
            if (m > 0) {
                p.transmit(b, 0, m);
                ingress.touch(p);
            }
        }
        for (int i = 0; i < n; i++) { // all delivered
            dst[i] = null;
            flooded[i] = false;
        }
    }

    /**
     * Checks a frame from {@code in}, counts it, learns its source and looks up its destination: the destination's
     * port number, or {@link #DROP} (counted why) or {@link #FLOOD}, with {@link #SAME_FOR_SAME_ADDRESSES} when the
     * source was learned and {@link #GROUP} when flooded for a group destination.
     */
    private int classify(Port in, Ingress ingress, Frame frame, int t, Port[] ps) {
        Counters rx = ingress.counters();
        int len = frame.length();
        if (len < Ethernet.HEADER) {
            rx.increment(PortStat.RX_DROPPED_RUNT);
            return DROP;
        }
        if (len > maxFrame) {
            rx.increment(PortStat.RX_DROPPED_OVERSIZE);
            return DROP;
        }
        long dst = frame.destination();
        long src = frame.source();
        if (!Mac.isValidSource(src)) {
            rx.increment(PortStat.RX_DROPPED_BAD_SOURCE);
            return DROP;
        }
        long pinned = in.pinnedSource();
        if (pinned != -1 && src != pinned) {
            rx.increment(PortStat.RX_DROPPED_BAD_SOURCE);
            if (spoofLog.due()) { // no capturing lambda (an allocation) per spoofed frame
                spoofLog.warn(() -> in + ": dropped frames from " + Mac.toString(src) + ": the port is pinned to "
                        + Mac.toString(pinned));
            }
            return DROP;
        }
        int self = in.index();
        Pins p = pins;
        if (p.macs().length != 0 && src != pinned) {
            int owner = p.owner(src);
            if (owner >= 0 && owner != self) {
                rx.increment(PortStat.RX_DROPPED_BAD_SOURCE);
                if (spoofLog.due()) {
                    spoofLog.warn(() -> in + ": dropped frames from " + Mac.toString(src) + ": that address belongs to "
                            + "the port pinned to it (" + nameOf(owner) + ")");
                }
                return DROP;
            }
        }
        rx.rx(len);
        int learned = macs.tryLearn(src, self, t);
        int same = SAME_FOR_SAME_ADDRESSES;
        if (learned != MacTable.LEARNED) {
            same = 0;
            rx.increment(PortStat.RX_UNLEARNED);
            if (learnLog.due()) { // an honest port's every frame once the table is full: nothing per frame
                learnLog.warn(() -> in + ": did not learn " + Mac.toString(src) + ": "
                        + (learned == MacTable.PORT_FULL
                                ? "the port already holds " + config.macsPerPort() + " addresses (macs-per-port)"
                                : "the MAC table is full (" + config.macTableCapacity() + " addresses)")
                        + "; its frames are still forwarded, replies to it are flooded");
            }
        }
        if (Mac.isMulticast(dst)) {
            rx.increment(PortStat.RX_MULTICAST);
            rx.increment(PortStat.RX_FLOODED);
            return FLOOD | GROUP | same;
        }
        int out = macs.lookup(dst, t);
        if (p.macs().length != 0 && (out < 0 || out >= ps.length || ps[out] == null)) {
            // A pinned address is its port's for as long as the port is there: its entry may have aged out (a guest
            // that only receives), gone with the port's peer (a reconnect), or name a port no longer there (a port
            // being removed, pinned to it before, whose receive thread was still forwarding that port's frames when
            // it was taken out and learned it again after the address's new port took it), and flooding would hand
            // the pinned guest's unicast to every other port. Its frames go to its port instead (dropped there as
            // link down while the guest is away). Costs a scan of the pins on a miss only.
            out = p.owner(dst);
        }
        if (out == self) {
            rx.increment(PortStat.RX_FILTERED);
            return DROP; // counted as filtered each time: not reused
        }
        if (out < 0 || out >= ps.length || ps[out] == null) {
            rx.increment(PortStat.RX_FLOODED);
            return FLOOD | same;
        }
        return out | same;
    }

    private static void flood(int self, Port[] ps, Frame frame, Ingress ingress) {
        for (int i = 0; i < ps.length; i++) {
            Port p = ps[i];
            if (i != self && p != null && p.isLinkUp()) {
                p.transmit(frame);
                ingress.touch(p);
            }
        }
    }

    /** Every port's counters now. */
    public List<PortStats> stats() {
        List<PortStats> out = new ArrayList<>();
        for (Port p : ports()) {
            out.add(p.stats());
        }
        return out;
    }

    /**
     * Closes every port, and returns once the removals under way have closed theirs too: what the caller tears
     * down next (a worker group the ports' queues use) is no longer used by any of them. Each port is in
     * {@link #closing} until its close here has returned, so a removal of it meanwhile waits for that close.
     */
    @Override
    public void close() {
        Port[] ps;
        synchronized (this) {
            if (closed) {
                return;
            }
            closed = true;
            ps = ports.clone();
            for (int i = 0; i < ps.length; i++) {
                Port p = ps[i];
                if (p != null && starting.contains(p)) {
                    ps[i] = null; // its add closes it once its start has returned
                } else if (p != null) {
                    closing.put(p.index(), p); // no removal has it: a number is in the table or being removed
                }
            }
            if (housekeeper != null) {
                housekeeper.interrupt();
            }
        }
        Throwable failed = null; // the first, thrown once every port is closed; the others suppressed in it
        for (Port p : ps) {
            if (p == null) {
                continue;
            }
            try {
                p.close(); // each in its own try: one port's failing close does not leave the others open
            } catch (RuntimeException | Error e) {
                if (failed == null) {
                    failed = e;
                } else {
                    failed.addSuppressed(e);
                }
            } finally {
                closed(p); // a removal waiting for it returns (a close that threw does not go on for ever)
            }
        }
        synchronized (this) {
            awaitRemovals(() -> closing.isEmpty() && starting.isEmpty());
        }
        if (failed instanceof RuntimeException e) {
            throw e;
        }
        if (failed instanceof Error e) {
            throw e;
        }
    }

    /** {@link #close} has closed {@code p}: a removal of it waiting for that returns. */
    private synchronized void closed(Port p) {
        if (closing.remove(p.index(), p)) {
            notifyAll();
        }
    }
}
