package io.iovirt.memory;

/**
 * The current guest memory snapshot of one device, swapped as a whole when the frontend changes the memory table.
 * Queue workers read it with {@link #get()} (a volatile read) once per batch, never per byte.
 */
public final class GuestMemoryHolder {
    private volatile GuestMemory current = GuestMemory.empty();

    public GuestMemory get() {
        return current;
    }

    /** Installs {@code next} and returns the snapshot it replaced; the caller releases what is no longer mapped. */
    public GuestMemory swap(GuestMemory next) {
        GuestMemory prev = current;
        current = next;
        return prev;
    }
}
