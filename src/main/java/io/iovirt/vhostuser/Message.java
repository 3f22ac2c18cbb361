// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * One received and structurally validated message. The payload is a view of the connection's receive buffer,
 * valid until the next receive. The message owns the descriptors that came with it until a handler takes them;
 * {@link #close()} closes the ones nobody took.
 */
public final class Message implements AutoCloseable {
    private final MessageType type;
    private final int flags;
    private final MemorySegment payload;
    private final List<Fd> fds;

    Message(MessageType type, int flags, MemorySegment payload, List<Fd> fds) {
        this.type = type;
        this.flags = flags;
        this.payload = payload;
        this.fds = new ArrayList<>(fds);
    }

    public MessageType type() {
        return type;
    }

    public int flags() {
        return flags;
    }

    public boolean needReply() {
        return (flags & Header.NEED_REPLY) != 0;
    }

    public MemorySegment payload() {
        return payload;
    }

    public int fdCount() {
        return fds.size();
    }

    /** Transfers ownership of descriptor {@code i} to the caller. */
    public Fd takeFd(int i) {
        Fd fd = fds.set(i, null);
        if (fd == null) {
            throw new IllegalStateException("descriptor " + i + " of " + type + " was already taken");
        }
        return fd;
    }

    /** Closes every descriptor that was not taken. */
    @Override
    public void close() {
        Fd.closeAll(fds);
        fds.replaceAll(f -> null);
    }

    @Override
    public String toString() {
        return type.specName() + "(flags 0x" + Integer.toHexString(flags) + ", " + payload.byteSize() + " bytes, "
                + fds.size() + " fds)";
    }
}
