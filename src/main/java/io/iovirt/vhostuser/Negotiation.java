// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static io.iovirt.vhostuser.Features.VHOST_USER_F_PROTOCOL_FEATURES;

import io.iovirt.virtio.VirtioFeatures;

/**
 * What one connection negotiated: the virtio features offered and acknowledged (GET/SET_FEATURES), the vhost-user
 * protocol features (GET/SET_PROTOCOL_FEATURES) and which dialect the frontend speaks. Everything derived from them
 * — what the device sees, whether dirty logging is on, the ring layout — is computed here, once. Control thread only.
 */
final class Negotiation {
    private final long offeredFeatures;
    private final long offeredProtocolFeatures;
    private final int maxQueueSize;

    private long ackedFeatures;
    private long ackedProtocolFeatures;
    /** SET_PROTOCOL_FEATURES was received: the frontend speaks the protocol-features dialect. */
    private boolean protocolFeaturesExchanged;

    /** @throws IllegalArgumentException when the device asks for protocol features or a queue size it may not */
    Negotiation(VhostUserBackend device) {
        this.maxQueueSize = device.maxQueueSize();
        if (maxQueueSize < 1 || maxQueueSize > Vring.MAX_SIZE) {
            throw new IllegalArgumentException("maximum queue size must be 1.." + Vring.MAX_SIZE + ": " + maxQueueSize);
        }
        long extra = device.protocolFeatures();
        if ((extra & ~Features.DEVICE_PROTOCOL_FEATURES) != 0) {
            throw new IllegalArgumentException(
                    "a device may add only RARP, NET_MTU, INFLIGHT_SHMFD and BACKEND_REQ protocol features, not 0x"
                            + Long.toHexString(extra));
        }
        // VHOST_F_LOG_ALL is the protocol layer's own (dirty logging, issue 11); the device never sees it.
        this.offeredFeatures = (device.features() | VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL)
                & ~VirtioFeatures.VIRTIO_F_ACCESS_PLATFORM;
        this.offeredProtocolFeatures = Features.CORE_PROTOCOL_FEATURES | extra;
    }

    long offeredFeatures() {
        return offeredFeatures;
    }

    long offeredProtocolFeatures() {
        return offeredProtocolFeatures;
    }

    int maxQueueSize() {
        return maxQueueSize;
    }

    /**
     * Checks a SET_FEATURES value against the offer.
     *
     * @return the bits it changes
     */
    long checkFeatures(long features) throws ProtocolException {
        if ((features & ~offeredFeatures) != 0) {
            throw new ProtocolException(String.format(
                    "SET_FEATURES acknowledges 0x%x, which was not offered (offered 0x%x)",
                    features & ~offeredFeatures, offeredFeatures));
        }
        return features ^ ackedFeatures;
    }

    /** SET_FEATURES, once checked ({@link #checkFeatures}); RESET_DEVICE acknowledges 0. */
    void ackFeatures(long features) {
        ackedFeatures = features;
    }

    void ackProtocolFeatures(long features) throws ProtocolException {
        if ((features & ~offeredProtocolFeatures) != 0) {
            throw new ProtocolException(String.format(
                    "SET_PROTOCOL_FEATURES acknowledges 0x%x, which was not offered (offered 0x%x)",
                    features & ~offeredProtocolFeatures, offeredProtocolFeatures));
        }
        ackedProtocolFeatures = features;
        protocolFeaturesExchanged = true;
    }

    /** True when protocol feature {@code bit} (VHOST_USER_PROTOCOL_F_*) was acknowledged. */
    boolean hasProtocolFeature(int bit) {
        return (ackedProtocolFeatures & Features.bit(bit)) != 0;
    }

    boolean replyAck() {
        return hasProtocolFeature(Features.PROTOCOL_REPLY_ACK);
    }

    /**
     * True when the frontend speaks the protocol-features dialect: it acknowledged VHOST_USER_F_PROTOCOL_FEATURES, or
     * it completed SET_PROTOCOL_FEATURES. The second matters: QEMU 7.2's vhost-user-net drops bit 30 from the
     * SET_FEATURES it sends (fixed in later QEMU), yet enables rings with SET_VRING_ENABLE; DPDK and libvhost-user
     * accept that, and so do we.
     */
    boolean protocolFeaturesNegotiated() {
        return (ackedFeatures & VHOST_USER_F_PROTOCOL_FEATURES) != 0 || protocolFeaturesExchanged;
    }

    /** What the device sees of the acknowledged features: no vhost-user protocol bit, no VHOST_F_LOG_ALL. */
    long deviceFeatures() {
        return ackedFeatures & ~(VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL);
    }

    /** VHOST_F_LOG_ALL is acknowledged: the frontend wants guest writes logged (migration). */
    boolean logging() {
        return (ackedFeatures & Features.VHOST_F_LOG_ALL) != 0;
    }

    /** What the acknowledged features make of ring sizes (split or packed, EVENT_IDX, the device's largest ring). */
    Vring.Layout ringLayout() {
        return new Vring.Layout(
                (ackedFeatures & VirtioFeatures.VIRTIO_F_RING_PACKED) != 0,
                (ackedFeatures & VirtioFeatures.VIRTIO_RING_F_EVENT_IDX) != 0,
                maxQueueSize);
    }
}
