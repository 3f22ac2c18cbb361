// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static io.iovirt.vhostuser.Payloads.CONFIG_HEADER_SIZE;
import static io.iovirt.vhostuser.Payloads.CONFIG_MAX_SIZE;
import static io.iovirt.vhostuser.Payloads.INFLIGHT_SIZE;
import static io.iovirt.vhostuser.Payloads.IOTLB_SIZE;
import static io.iovirt.vhostuser.Payloads.LOG_SIZE;
import static io.iovirt.vhostuser.Payloads.MAX_PAYLOAD_SIZE;
import static io.iovirt.vhostuser.Payloads.MEMORY_HEADER_SIZE;
import static io.iovirt.vhostuser.Payloads.MEMORY_MAX_SIZE;
import static io.iovirt.vhostuser.Payloads.SINGLE_REGION_SIZE;
import static io.iovirt.vhostuser.Payloads.U64_SIZE;
import static io.iovirt.vhostuser.Payloads.VRING_ADDR_SIZE;
import static io.iovirt.vhostuser.Payloads.VRING_AREA_SIZE;
import static io.iovirt.vhostuser.Payloads.VRING_STATE_SIZE;

/**
 * Every vhost-user request (QEMU docs/interop/vhost-user.rst) with what a well-formed one looks like: payload size
 * range, how many file descriptors it may carry, what the reply holds, and the protocol feature it requires. The
 * connection checks a message against this table before reading its payload; the handler checks the rest.
 */
public enum MessageType {
    // ---- front-end requests -------------------------------------------------------------------------------------
    GET_FEATURES(Dir.FRONTEND, 1, 0, 0, 0, Reply.U64, -1),
    SET_FEATURES(Dir.FRONTEND, 2, U64_SIZE, U64_SIZE, 0, Reply.ACK, -1),
    SET_OWNER(Dir.FRONTEND, 3, 0, 0, 0, Reply.ACK, -1),
    RESET_OWNER(Dir.FRONTEND, 4, 0, 0, 0, Reply.ACK, -1),
    /** One descriptor per region, in order; the count is checked against the payload's region count. */
    SET_MEM_TABLE(
            Dir.FRONTEND, 5, MEMORY_HEADER_SIZE, MEMORY_MAX_SIZE, 0, Payloads.MAX_MEMORY_TABLE_REGIONS, Reply.ACK, -1),
    /**
     * The 16-byte log description and the log's shared-memory fd (LOG_SHMFD). With LOG_SHMFD the frontend always
     * waits for a reply (QEMU reads one of any size), so it has a reply body here.
     */
    SET_LOG_BASE(Dir.FRONTEND, 6, U64_SIZE, LOG_SIZE, 0, 1, Reply.ANY, -1),
    SET_LOG_FD(Dir.FRONTEND, 7, 0, 0, 0, 1, Reply.ACK, -1),
    SET_VRING_NUM(Dir.FRONTEND, 8, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, -1),
    SET_VRING_ADDR(Dir.FRONTEND, 9, VRING_ADDR_SIZE, VRING_ADDR_SIZE, 0, Reply.ACK, -1),
    SET_VRING_BASE(Dir.FRONTEND, 10, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, -1),
    GET_VRING_BASE(Dir.FRONTEND, 11, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.VRING_STATE, -1),
    /** Bit 8 of the payload says "no descriptor": then none may come, otherwise exactly one. */
    SET_VRING_KICK(Dir.FRONTEND, 12, U64_SIZE, U64_SIZE, 0, 1, Reply.ACK, -1),
    SET_VRING_CALL(Dir.FRONTEND, 13, U64_SIZE, U64_SIZE, 0, 1, Reply.ACK, -1),
    SET_VRING_ERR(Dir.FRONTEND, 14, U64_SIZE, U64_SIZE, 0, 1, Reply.ACK, -1),
    GET_PROTOCOL_FEATURES(Dir.FRONTEND, 15, 0, 0, 0, Reply.U64, -1),
    SET_PROTOCOL_FEATURES(Dir.FRONTEND, 16, U64_SIZE, U64_SIZE, 0, Reply.ACK, -1),
    GET_QUEUE_NUM(Dir.FRONTEND, 17, 0, 0, 0, Reply.U64, Features.PROTOCOL_MQ),
    SET_VRING_ENABLE(Dir.FRONTEND, 18, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, -1),
    SEND_RARP(Dir.FRONTEND, 19, U64_SIZE, U64_SIZE, 0, Reply.ACK, Features.PROTOCOL_RARP),
    NET_SET_MTU(Dir.FRONTEND, 20, U64_SIZE, U64_SIZE, 0, Reply.ACK, Features.PROTOCOL_NET_MTU),
    SET_BACKEND_REQ_FD(Dir.FRONTEND, 21, 0, 0, 1, 1, Reply.ACK, Features.PROTOCOL_BACKEND_REQ),
    IOTLB_MSG(Dir.FRONTEND, 22, IOTLB_SIZE, IOTLB_SIZE, 0, Reply.U64, -1),
    SET_VRING_ENDIAN(
            Dir.FRONTEND, 23, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, Features.PROTOCOL_CROSS_ENDIAN),
    GET_CONFIG(Dir.FRONTEND, 24, CONFIG_HEADER_SIZE, CONFIG_MAX_SIZE, 0, Reply.CONFIG, Features.PROTOCOL_CONFIG),
    SET_CONFIG(Dir.FRONTEND, 25, CONFIG_HEADER_SIZE, CONFIG_MAX_SIZE, 0, Reply.ACK, Features.PROTOCOL_CONFIG),
    CREATE_CRYPTO_SESSION(Dir.FRONTEND, 26, 0, MAX_PAYLOAD_SIZE, 0, Reply.ANY, Features.PROTOCOL_CRYPTO_SESSION),
    CLOSE_CRYPTO_SESSION(Dir.FRONTEND, 27, U64_SIZE, U64_SIZE, 0, Reply.ACK, Features.PROTOCOL_CRYPTO_SESSION),
    POSTCOPY_ADVISE(Dir.FRONTEND, 28, 0, 0, 0, Reply.ANY, Features.PROTOCOL_PAGEFAULT),
    POSTCOPY_LISTEN(Dir.FRONTEND, 29, 0, 0, 0, Reply.ACK, Features.PROTOCOL_PAGEFAULT),
    POSTCOPY_END(Dir.FRONTEND, 30, 0, 0, 0, Reply.U64, Features.PROTOCOL_PAGEFAULT),
    GET_INFLIGHT_FD(Dir.FRONTEND, 31, INFLIGHT_SIZE, INFLIGHT_SIZE, 0, Reply.ANY, Features.PROTOCOL_INFLIGHT_SHMFD),
    SET_INFLIGHT_FD(Dir.FRONTEND, 32, INFLIGHT_SIZE, INFLIGHT_SIZE, 1, 1, Reply.ACK, Features.PROTOCOL_INFLIGHT_SHMFD),
    /** vhost-user-gpu only; a device protocol outside this implementation. */
    GPU_SET_SOCKET(Dir.FRONTEND, 33, 0, 0, 1, 1, Reply.ACK, -1),
    RESET_DEVICE(Dir.FRONTEND, 34, 0, 0, 0, Reply.ACK, Features.PROTOCOL_RESET_DEVICE),
    VRING_KICK(
            Dir.FRONTEND, 35, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, Features.PROTOCOL_INBAND_NOTIFICATIONS),
    GET_MAX_MEM_SLOTS(Dir.FRONTEND, 36, 0, 0, 0, Reply.U64, Features.PROTOCOL_CONFIGURE_MEM_SLOTS),
    ADD_MEM_REG(
            Dir.FRONTEND,
            37,
            SINGLE_REGION_SIZE,
            SINGLE_REGION_SIZE,
            1,
            1,
            Reply.ACK,
            Features.PROTOCOL_CONFIGURE_MEM_SLOTS),
    /** The spec allows (and requires closing) one stray descriptor for compatibility with old frontends. */
    REM_MEM_REG(
            Dir.FRONTEND,
            38,
            SINGLE_REGION_SIZE,
            SINGLE_REGION_SIZE,
            0,
            1,
            Reply.ACK,
            Features.PROTOCOL_CONFIGURE_MEM_SLOTS),
    SET_STATUS(Dir.FRONTEND, 39, U64_SIZE, U64_SIZE, 0, Reply.ACK, Features.PROTOCOL_STATUS),
    GET_STATUS(Dir.FRONTEND, 40, 0, 0, 0, Reply.U64, Features.PROTOCOL_STATUS),

    // ---- back-end requests (sent on the back-end channel; never offered by this implementation) ------------------
    BACKEND_IOTLB_MSG(Dir.BACKEND, 1, IOTLB_SIZE, IOTLB_SIZE, 0, Reply.ACK, -1),
    BACKEND_CONFIG_CHANGE_MSG(Dir.BACKEND, 2, 0, 0, 0, Reply.ACK, Features.PROTOCOL_CONFIG),
    BACKEND_VRING_HOST_NOTIFIER_MSG(
            Dir.BACKEND, 3, VRING_AREA_SIZE, VRING_AREA_SIZE, 0, 1, Reply.ACK, Features.PROTOCOL_HOST_NOTIFIER),
    BACKEND_VRING_CALL(
            Dir.BACKEND, 4, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, Features.PROTOCOL_INBAND_NOTIFICATIONS),
    BACKEND_VRING_ERR(
            Dir.BACKEND, 5, VRING_STATE_SIZE, VRING_STATE_SIZE, 0, Reply.ACK, Features.PROTOCOL_INBAND_NOTIFICATIONS);

    /** Who sends the request. */
    public enum Dir {
        FRONTEND,
        BACKEND
    }

    /** What a reply carries. ACK: a u64 status, only when the request had NEED_REPLY (REPLY_ACK negotiated). */
    public enum Reply {
        ACK,
        U64,
        VRING_STATE,
        CONFIG,
        ANY
    }

    private static final MessageType[] FRONTEND_BY_CODE = new MessageType[41];
    private static final MessageType[] BACKEND_BY_CODE = new MessageType[6];

    static {
        for (MessageType t : values()) {
            (t.dir == Dir.FRONTEND ? FRONTEND_BY_CODE : BACKEND_BY_CODE)[t.code] = t;
        }
    }

    private final Dir dir;
    private final int code;
    private final int minSize;
    private final int maxSize;
    private final int minFds;
    private final int maxFds;
    private final Reply reply;
    private final int protocolFeature;

    MessageType(Dir dir, int code, int minSize, int maxSize, int fds, Reply reply, int protocolFeature) {
        this(dir, code, minSize, maxSize, fds, fds, reply, protocolFeature);
    }

    MessageType(Dir dir, int code, int minSize, int maxSize, int minFds, int maxFds, Reply reply, int protocolFeature) {
        this.dir = dir;
        this.code = code;
        this.minSize = minSize;
        this.maxSize = maxSize;
        this.minFds = minFds;
        this.maxFds = maxFds;
        this.reply = reply;
        this.protocolFeature = protocolFeature;
    }

    /** The front-end request with this code, or null. */
    public static MessageType frontendRequest(int code) {
        return code > 0 && code < FRONTEND_BY_CODE.length ? FRONTEND_BY_CODE[code] : null;
    }

    /** The back-end request with this code, or null. */
    public static MessageType backendRequest(int code) {
        return code > 0 && code < BACKEND_BY_CODE.length ? BACKEND_BY_CODE[code] : null;
    }

    public Dir dir() {
        return dir;
    }

    public int code() {
        return code;
    }

    /** Smallest well-formed payload. */
    public int minSize() {
        return minSize;
    }

    /** Largest well-formed payload (equal to {@link #minSize} for fixed-size payloads). */
    public int maxSize() {
        return maxSize;
    }

    public int minFds() {
        return minFds;
    }

    public int maxFds() {
        return maxFds;
    }

    public Reply reply() {
        return reply;
    }

    /** True when the request always gets a reply with a body, whether or not NEED_REPLY was set. */
    public boolean hasReplyBody() {
        return reply != Reply.ACK;
    }

    /** The VHOST_USER_PROTOCOL_F_* bit this request needs negotiated, or -1. */
    public int protocolFeature() {
        return protocolFeature;
    }

    /** The spec's name, e.g. {@code VHOST_USER_SET_VRING_KICK}. */
    public String specName() {
        return "VHOST_USER_" + name();
    }
}
