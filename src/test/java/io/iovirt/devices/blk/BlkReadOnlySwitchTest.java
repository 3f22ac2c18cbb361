// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

import static io.iovirt.devices.blk.BlkRequests.F_DISCARD;
import static io.iovirt.devices.blk.BlkRequests.F_FLUSH;
import static io.iovirt.devices.blk.BlkRequests.F_RO;
import static io.iovirt.devices.blk.BlkRequests.F_WRITE_ZEROES;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.storage.RawImage;
import io.iovirt.vhostuser.BackendException;
import io.iovirt.vhostuser.Features;
import io.iovirt.vhostuser.VhostUserFrontend;
import io.iovirt.vhostuser.VhostUserServer;
import io.iovirt.virtio.VirtioFeatures;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;

/**
 * A disk switched to read-only while a frontend is connected (blk.set-readonly): the frontend's offer does not change
 * with it, so what it acknowledges from that offer is still accepted.
 */
@Timeout(60)
class BlkReadOnlySwitchTest {
    @TempDir
    Path dir;

    /**
     * QEMU reads the features once per connection and acknowledges, at every start and when a migration turns dirty
     * logging on (VHOST_F_LOG_ALL, with REPLY_ACK), what the guest accepted of that offer — DISCARD and WRITE_ZEROES
     * included. The device checked SET_FEATURES against its offer of now, which a switch to read-only had changed, and
     * refused it: a failure reply, on which QEMU 7.2 aborts the migrating VM (vhost_log_global_start).
     */
    @Test
    void featuresOfTheConnectionsOfferAreAcceptedAfterASwitchToReadOnly() throws Exception {
        Path p = dir.resolve("disk.raw");
        Files.write(p, new byte[1 << 20]);
        Path sock = dir.resolve("blk.sock");
        try (RawImage img = RawImage.open(p, false, false)) {
            BlkDevice dev = new BlkDevice("switch", img, 1, "s");
            try (VhostUserServer server = VhostUserServer.start(sock, dev);
                    VhostUserFrontend fe = VhostUserFrontend.connect(sock, Duration.ofSeconds(20))) {
                long offered = fe.getFeatures();
                long guest = VirtioFeatures.VIRTIO_F_VERSION_1 | 1L << F_FLUSH | 1L << F_DISCARD | 1L << F_WRITE_ZEROES;
                assertEquals(guest, offered & guest, "a writable disk offers discard and write-zeroes");
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES);
                fe.setProtocolFeatures(fe.getProtocolFeatures() & Features.bit(Features.PROTOCOL_REPLY_ACK));
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES);

                dev.setReadOnly(true);

                // a migration starts: dirty logging on, with a reply (REPLY_ACK) that QEMU insists on
                fe.setFeatures(guest | Features.VHOST_USER_F_PROTOCOL_FEATURES | Features.VHOST_F_LOG_ALL);
                assertEquals(guest, dev.ackedFeatures(), "the device took the features the frontend acknowledged");
                assertTrue((dev.features() & 1L << F_RO) != 0, "a new connection is offered a read-only disk");
                // what no connection was ever offered is still refused
                assertThrows(BackendException.class, () -> dev.setFeatures(guest | 1L << 50));
            }
        }
    }
}
