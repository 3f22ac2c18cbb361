// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

/** The 12-byte message header: {@code u32 request, u32 flags, u32 size} (size of the payload that follows). */
public final class Header {
    /** Lower two bits: protocol version. */
    public static final int VERSION_MASK = 0x3;

    public static final int VERSION = 0x1;
    /** Set on every reply from the back-end. */
    public static final int REPLY = 0x4;
    /** The sender wants a u64 status reply (REPLY_ACK). */
    public static final int NEED_REPLY = 0x8;
    /** Every bit a request may carry. */
    static final int REQUEST_FLAGS = VERSION_MASK | NEED_REPLY;

    private Header() {}
}
