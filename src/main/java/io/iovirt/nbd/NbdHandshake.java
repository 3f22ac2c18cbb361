// SPDX-License-Identifier: Apache-2.0
package io.iovirt.nbd;

import static io.iovirt.nbd.Nbd.*;

import io.iovirt.nbd.NbdConnection.ProtocolViolation;
import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;

/**
 * The first phase of a connection: the fixed newstyle handshake and its option haggling (NBD doc/proto.md,
 * "Handshake" and "Option types"), up to the export the client chose with {@code NBD_OPT_GO} or
 * {@code NBD_OPT_EXPORT_NAME}. It runs once per connection, on the connection's thread, and what it agreed on
 * ({@link Negotiated}) is all the transmission phase needs of it.
 *
 * <p>Every option field is checked before use. An option the server cannot or will not serve gets its error reply
 * and the haggling goes on, as the protocol asks; only a stream that can no longer be trusted (a bad magic, unknown
 * client flags, option data past {@link #MAX_SKIPPED}) disconnects the client. Option data is bounded: at most
 * {@link #MAX_OPTION} bytes are read into memory, more (up to {@link #MAX_SKIPPED}) is read past and refused.
 */
final class NbdHandshake {
    /** Largest option data we read (export names are at most 4 KiB; the spec's LIST/INFO data are small). */
    static final int MAX_OPTION = 64 << 10;
    /** Largest option data we read past (to answer NBD_REP_ERR_TOO_BIG); a longer option disconnects. */
    private static final long MAX_SKIPPED = 16L << 20;

    private static final int PREFERRED_BLOCK = 4096;

    /**
     * What the handshake settled on.
     *
     * @param export         the export the client chose
     * @param structured     whether replies are structured (NBD_OPT_STRUCTURED_REPLY was acknowledged)
     * @param baseAllocation whether {@code base:allocation} was set for this export (NBD_OPT_SET_META_CONTEXT), so
     *                       NBD_CMD_BLOCK_STATUS may be used
     * @param minimumBlock   the smallest block requests must be aligned to (sent as NBD_INFO_BLOCK_SIZE's minimum
     *                       to a client that used INFO/GO; enforced on every client)
     */
    record Negotiated(NbdExport export, boolean structured, boolean baseAllocation, int minimumBlock) {}

    private final NbdConnection connection;
    private final NbdServer server;
    private final NbdChannel ch;
    /** Option reply headers, the greeting and EXPORT_NAME's reply. */
    private final ByteBuffer reply = ByteBuffer.allocateDirect(64);
    /** The client's flags and each option's header fields. */
    private final ByteBuffer number = ByteBuffer.allocateDirect(8);

    private boolean noZeroes;
    private boolean structured;
    /** Export name the base:allocation context was set for, or null. */
    private String metaExport;

    NbdHandshake(NbdConnection connection, NbdServer server, NbdChannel ch) {
        this.connection = connection;
        this.server = server;
        this.ch = ch;
    }

    /**
     * Haggles until the client chooses an export, then hands it to {@link NbdConnection#open} — at the point it is
     * settled: before EXPORT_NAME's reply, after GO's final ACK — and returns what was agreed.
     *
     * @return what was agreed, or null to close (ABORT, an unknown EXPORT_NAME)
     */
    Negotiated negotiate() throws IOException {
        ch.writeFully(Nbd.greeting(reply.clear()).flip());
        if (!connection.awaiting()) {
            return null; // the server is shutting down
        }
        int clientFlags = readInt();
        connection.busy();
        if ((clientFlags & ~(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) != 0) {
            throw new ProtocolViolation("unknown client flags 0x" + Integer.toHexString(clientFlags));
        }
        if ((clientFlags & FLAG_FIXED_NEWSTYLE) == 0) {
            throw new ProtocolViolation("client does not speak fixed newstyle negotiation");
        }
        noZeroes = (clientFlags & FLAG_NO_ZEROES) != 0;
        while (true) {
            if (!connection.awaiting()) {
                return null; // the server is shutting down: no option under way, close
            }
            long magic = readLong();
            connection.busy();
            if (magic != IHAVEOPT) {
                throw new ProtocolViolation("option without IHAVEOPT magic");
            }
            int option = readInt();
            long len = Integer.toUnsignedLong(readInt());
            if (len > MAX_OPTION) {
                if (len > MAX_SKIPPED) {
                    throw new ProtocolViolation("option " + option + " with " + len + " bytes of data");
                }
                if (connection.shuttingDown() && !connection.shutdownPayload(len)) {
                    // a client that goes on sending large options after the shutdown: not read past (the rest is
                    // dropped at the close), answered, and the session ends
                    optionReply(option, REP_ERR_SHUTDOWN, "the NBD server is shutting down; reconnect later");
                    connection.shutdownAnswered();
                    return null;
                }
                skip(len);
                if (connection.shuttingDown()) { // as below: the client is told why the session ends
                    optionReply(option, REP_ERR_SHUTDOWN, "the NBD server is shutting down; reconnect later");
                    if (!connection.shutdownAnswered()) {
                        return null;
                    }
                    continue;
                }
                optionReply(option, REP_ERR_TOO_BIG, "option data of " + len + " bytes is too large");
                continue;
            }
            ByteBuffer data = readOption((int) len);
            if (connection.shuttingDown() && option != OPT_ABORT) {
                // doc/proto.md, "Termination of the session during option haggling": a server being shut down
                // SHOULD answer options other than ABORT with NBD_REP_ERR_SHUTDOWN (the client then MUST end the
                // session); EXPORT_NAME has no error reply, so its session ends here.
                if (option == OPT_EXPORT_NAME) {
                    return null;
                }
                optionReply(option, REP_ERR_SHUTDOWN, "the NBD server is shutting down; reconnect later");
                if (!connection.shutdownAnswered()) {
                    return null; // the client goes on after being told: the session ends
                }
                continue;
            }
            switch (option) {
                case OPT_EXPORT_NAME -> {
                    String name = string(data, data.remaining());
                    NbdExport e = name == null ? null : server.export(name);
                    if (e == null) {
                        connection.event(
                                System.Logger.Level.INFO,
                                "EXPORT_NAME for unknown export '" + name + "': disconnecting");
                        return null;
                    }
                    Negotiated agreed = open(e);
                    ByteBuffer r = reply.clear();
                    r.putLong(e.image().size())
                            .putShort((short) e.transmissionFlags(structured))
                            .flip();
                    ch.writeFully(r);
                    if (!noZeroes) {
                        ch.writeFully(ByteBuffer.allocate(124));
                    }
                    return agreed;
                }
                case OPT_ABORT -> {
                    try {
                        optionReply(option, REP_ACK, (String) null);
                    } catch (IOException e) {
                        // The client may close without waiting for the ACK, as the protocol lets it and as
                        // qemu-nbd -L and nbd-client -l do: not a failure worth a log line (it was an EPIPE one).
                    }
                    return null;
                }
                case OPT_LIST -> {
                    if (len != 0) {
                        optionReply(option, REP_ERR_INVALID, "LIST takes no data");
                        continue;
                    }
                    for (NbdExport e : server.exports()) {
                        optionReply(option, REP_SERVER, listEntry(e));
                    }
                    optionReply(option, REP_ACK, (String) null);
                }
                case OPT_STRUCTURED_REPLY -> {
                    if (len != 0) {
                        optionReply(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                        continue;
                    }
                    structured = true;
                    optionReply(option, REP_ACK, (String) null);
                }
                case OPT_INFO, OPT_GO -> {
                    Negotiated agreed = infoOrGo(option, data);
                    if (agreed != null) {
                        return agreed;
                    }
                }
                case OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT -> metaContext(option, data);
                case OPT_STARTTLS ->
                    optionReply(option, REP_ERR_UNSUP, "TLS is not supported: use a UNIX socket or an SSH tunnel");
                default -> optionReply(option, REP_ERR_UNSUP, "option " + option + " is not supported");
            }
        }
    }

    /**
     * An NBD_REP_SERVER reply's data: the name, then the description as the free text the protocol allows after it
     * ("implementation-specific details ... suitable for direct display to a human being"). qemu-nbd's server sends
     * the description there too, and it is where QEMU's client ({@code qemu-nbd -L}) and {@code nbd-client -l} read
     * it from: neither asks NBD_OPT_INFO for NBD_INFO_DESCRIPTION. {@link NbdExport} keeps it within the protocol's
     * 4096 bytes.
     */
    private static ByteBuffer listEntry(NbdExport e) {
        byte[] n = e.name().getBytes(StandardCharsets.UTF_8);
        byte[] d = e.description() == null ? new byte[0] : e.description().getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(4 + n.length + d.length)
                .putInt(n.length)
                .put(n)
                .put(d)
                .flip();
    }

    /** The client chose {@code e}: what was agreed, handed to the connection to start its transmission phase. */
    private Negotiated open(NbdExport e) {
        // a context set for another export does not carry over
        Negotiated agreed = new Negotiated(e, structured, e.name().equals(metaExport), e.minimumBlock());
        connection.open(agreed);
        return agreed;
    }

    /** OPT_INFO / OPT_GO. Returns what was agreed when GO succeeded (transmission starts), else null. */
    private Negotiated infoOrGo(int option, ByteBuffer data) throws IOException {
        if (data.remaining() < 6) {
            optionReply(option, REP_ERR_INVALID, "INFO/GO data too short");
            return null;
        }
        long nameLen = Integer.toUnsignedLong(data.getInt());
        if (nameLen > data.remaining() - 2) {
            optionReply(option, REP_ERR_INVALID, "export name length " + nameLen + " exceeds the option data");
            return null;
        }
        String name = string(data, (int) nameLen);
        int requests = Short.toUnsignedInt(data.getShort());
        if (data.remaining() != requests * 2L) {
            optionReply(option, REP_ERR_INVALID, requests + " information requests do not match the option data");
            return null;
        }
        if (name == null) {
            optionReply(option, REP_ERR_INVALID, "export name is not valid UTF-8");
            return null;
        }
        NbdExport e = server.export(name);
        if (e == null) {
            optionReply(option, REP_ERR_UNKNOWN, "no export named '" + name + "' (OPT_LIST shows the exports)");
            return null;
        }
        boolean wantName = false, wantDescription = false;
        for (int i = 0; i < requests; i++) {
            int t = Short.toUnsignedInt(data.getShort());
            wantName |= t == INFO_NAME;
            wantDescription |= t == INFO_DESCRIPTION;
        }
        ByteBuffer r = ByteBuffer.allocate(12)
                .putShort((short) INFO_EXPORT)
                .putLong(e.image().size())
                .putShort((short) e.transmissionFlags(structured))
                .flip();
        optionReply(option, REP_INFO, r);
        if (wantName) {
            byte[] n = e.name().getBytes(StandardCharsets.UTF_8);
            optionReply(
                    option,
                    REP_INFO,
                    ByteBuffer.allocate(2 + n.length)
                            .putShort((short) INFO_NAME)
                            .put(n)
                            .flip());
        }
        if (wantDescription && e.description() != null) {
            byte[] d = e.description().getBytes(StandardCharsets.UTF_8);
            optionReply(
                    option,
                    REP_INFO,
                    ByteBuffer.allocate(2 + d.length)
                            .putShort((short) INFO_DESCRIPTION)
                            .put(d)
                            .flip());
        }
        // Block sizes are always sent (allowed even if not requested): minimum, preferred, maximum payload.
        optionReply(
                option,
                REP_INFO,
                ByteBuffer.allocate(14)
                        .putShort((short) INFO_BLOCK_SIZE)
                        .putInt(e.minimumBlock())
                        .putInt(Math.max(PREFERRED_BLOCK, e.minimumBlock()))
                        .putInt(NbdConnection.MAX_PAYLOAD)
                        .flip());
        optionReply(option, REP_ACK, (String) null);
        if (option == OPT_GO) {
            return open(e);
        }
        return null;
    }

    private void metaContext(int option, ByteBuffer data) throws IOException {
        if (!structured) {
            optionReply(
                    option, REP_ERR_INVALID, "metadata contexts need structured replies (OPT_STRUCTURED_REPLY first)");
            return;
        }
        if (data.remaining() < 8) {
            optionReply(option, REP_ERR_INVALID, "meta context data too short");
            return;
        }
        long nameLen = Integer.toUnsignedLong(data.getInt());
        if (nameLen > data.remaining() - 4) {
            optionReply(option, REP_ERR_INVALID, "export name length exceeds the option data");
            return;
        }
        String name = string(data, (int) nameLen);
        long queries = Integer.toUnsignedLong(data.getInt());
        if (name == null || server.export(name) == null) {
            optionReply(option, REP_ERR_UNKNOWN, "no export named '" + name + "'");
            return;
        }
        boolean match = false;
        for (long q = 0; q < queries; q++) {
            if (data.remaining() < 4) {
                optionReply(option, REP_ERR_INVALID, "query " + q + " runs past the option data");
                return;
            }
            long ql = Integer.toUnsignedLong(data.getInt());
            if (ql > data.remaining()) {
                optionReply(option, REP_ERR_INVALID, "query " + q + " runs past the option data");
                return;
            }
            String query = string(data, (int) ql);
            if (query == null) {
                optionReply(option, REP_ERR_INVALID, "query is not valid UTF-8");
                return;
            }
            match |= query.equals(BASE_ALLOCATION) || (option == OPT_LIST_META_CONTEXT && query.equals("base:"));
        }
        if (data.hasRemaining()) {
            optionReply(option, REP_ERR_INVALID, "trailing bytes after the queries");
            return;
        }
        if (option == OPT_LIST_META_CONTEXT && queries == 0) {
            match = true;
        }
        if (option == OPT_SET_META_CONTEXT) {
            metaExport = match ? name : null;
        }
        if (match) {
            byte[] n = BASE_ALLOCATION.getBytes(StandardCharsets.US_ASCII);
            int ctx = option == OPT_SET_META_CONTEXT ? CONTEXT_ID : 0;
            optionReply(
                    option,
                    REP_META_CONTEXT,
                    ByteBuffer.allocate(4 + n.length).putInt(ctx).put(n).flip());
        }
        optionReply(option, REP_ACK, (String) null);
    }

    /**
     * An option reply whose data is {@code message} (none if null), cut to the protocol's {@link Nbd#MAX_STRING}
     * bytes at a character boundary: an error message may quote what the client sent (an export name of up to
     * {@link #MAX_OPTION} bytes), and the client may refuse a string over the limit.
     */
    private void optionReply(int option, int type, String message) throws IOException {
        if (message == null) {
            optionReply(option, type, ByteBuffer.allocate(0));
            return;
        }
        byte[] b = message.getBytes(StandardCharsets.UTF_8);
        optionReply(option, type, ByteBuffer.wrap(b, 0, Nbd.utf8Prefix(b, Nbd.MAX_STRING)));
    }

    private void optionReply(int option, int type, ByteBuffer data) throws IOException {
        ch.writeFully(
                Nbd.optionReplyHeader(reply.clear(), option, type, data.remaining())
                        .flip(),
                data);
    }

    // ---- reads of the option phase -----------------------------------------------------------------------------

    private ByteBuffer readOption(int len) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(len);
        if (!ch.readFully(b, false)) {
            throw new EOFException("client disconnected in the middle of an option");
        }
        return b.flip();
    }

    private void skip(long len) throws IOException {
        ByteBuffer b = ByteBuffer.allocate(64 << 10);
        while (len > 0) {
            b.clear().limit((int) Math.min(b.capacity(), len));
            if (!ch.readFully(b, false)) {
                throw new EOFException("client disconnected in the middle of an option");
            }
            len -= b.limit();
        }
    }

    private int readInt() throws IOException {
        ByteBuffer b = number.clear().limit(4);
        if (!ch.readFully(b, false)) {
            throw new EOFException("client disconnected in the handshake");
        }
        return b.getInt(0);
    }

    /** An option's magic: EOF before it is the client leaving between options (an EOF without a message). */
    private long readLong() throws IOException {
        ByteBuffer b = number.clear().limit(8);
        if (!ch.readFully(b, true)) {
            throw new EOFException(null);
        }
        return b.getLong(0);
    }

    /** {@code len} bytes of {@code b} as UTF-8, or null if they are not valid UTF-8. */
    private static String string(ByteBuffer b, int len) {
        ByteBuffer s = b.slice(b.position(), len);
        b.position(b.position() + len);
        try {
            return StandardCharsets.UTF_8
                    .newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(s)
                    .toString();
        } catch (CharacterCodingException e) {
            return null;
        }
    }
}
