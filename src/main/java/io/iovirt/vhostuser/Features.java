// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

/**
 * Feature bits the vhost-user protocol layer itself interprets: VHOST_USER_F_PROTOCOL_FEATURES, VHOST_F_LOG_ALL and
 * the protocol features (VHOST_USER_PROTOCOL_F_*). Virtio's own bits are {@link io.iovirt.virtio.VirtioFeatures}.
 */
public final class Features {
    /** vhost-user: the backend speaks GET/SET_PROTOCOL_FEATURES (reuses the reserved virtio bit 30). */
    public static final long VHOST_USER_F_PROTOCOL_FEATURES = 1L << 30;
    /** vhost: dirty page logging for migration; offered by the protocol layer ({@link DirtyLog}). */
    public static final long VHOST_F_LOG_ALL = 1L << 26;

    // protocol feature bits (VHOST_USER_PROTOCOL_F_*)
    public static final int PROTOCOL_MQ = 0;
    public static final int PROTOCOL_LOG_SHMFD = 1;
    public static final int PROTOCOL_RARP = 2;
    public static final int PROTOCOL_REPLY_ACK = 3;
    public static final int PROTOCOL_NET_MTU = 4;
    public static final int PROTOCOL_BACKEND_REQ = 5;
    public static final int PROTOCOL_CROSS_ENDIAN = 6;
    public static final int PROTOCOL_CRYPTO_SESSION = 7;
    public static final int PROTOCOL_PAGEFAULT = 8;
    public static final int PROTOCOL_CONFIG = 9;
    public static final int PROTOCOL_BACKEND_SEND_FD = 10;
    public static final int PROTOCOL_HOST_NOTIFIER = 11;
    public static final int PROTOCOL_INFLIGHT_SHMFD = 12;
    public static final int PROTOCOL_RESET_DEVICE = 13;
    public static final int PROTOCOL_INBAND_NOTIFICATIONS = 14;
    public static final int PROTOCOL_CONFIGURE_MEM_SLOTS = 15;
    public static final int PROTOCOL_STATUS = 16;

    /** What every backend served by {@link VhostUserServer} offers. */
    public static final long CORE_PROTOCOL_FEATURES = bit(PROTOCOL_MQ)
            | bit(PROTOCOL_LOG_SHMFD)
            | bit(PROTOCOL_REPLY_ACK)
            | bit(PROTOCOL_CONFIG)
            | bit(PROTOCOL_CONFIGURE_MEM_SLOTS)
            | bit(PROTOCOL_RESET_DEVICE)
            | bit(PROTOCOL_STATUS);
    /**
     * Extras a device may add through {@link VhostUserBackend#protocolFeatures()}: RARP and NET_MTU messages go to
     * the device; INFLIGHT_SHMFD (crash recovery, for devices whose requests survive a resubmission) is handled by
     * the protocol layer and reaches the device as {@link VringSetup#inflight()}; BACKEND_REQ hands the device the
     * frontend's backend channel ({@link VhostUserBackend#backendChannel}).
     */
    public static final long DEVICE_PROTOCOL_FEATURES =
            bit(PROTOCOL_RARP) | bit(PROTOCOL_NET_MTU) | bit(PROTOCOL_INFLIGHT_SHMFD) | bit(PROTOCOL_BACKEND_REQ);

    private Features() {}

    public static long bit(int protocolFeature) {
        return 1L << protocolFeature;
    }
}
