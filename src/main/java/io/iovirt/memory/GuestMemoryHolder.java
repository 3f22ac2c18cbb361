package io.iovirt.memory;

/**
 * The current guest memory snapshot of one device, swapped as a whole when the frontend changes the memory table.
 * Queue workers read it with {@link #get()} (a volatile read) once per batch, never per byte.
 */
public final class GuestMemoryHolder {
    private volatile GuestMemory current = GuestMemory.empty();
    /** migration: the dirty log while the frontend has logging on, else null (see {@link WriteLog}). */
    private volatile WriteLog writeLog;

    public GuestMemory get() {
        return current;
    }

    /** Installs {@code next} and returns the snapshot it replaced; the caller releases what is no longer mapped. */
    public GuestMemory swap(GuestMemory next) {
        GuestMemory prev = current;
        current = next;
        return prev;
    }

    /** The dirty log devices report their guest-memory writes to, or null while no migration tracks them. */
    public WriteLog writeLog() {
        return writeLog;
    }

    /** Installs (or with null removes) the dirty log; the protocol layer calls this as the frontend toggles it. */
    public void writeLog(WriteLog log) {
        this.writeLog = log;
    }
}
