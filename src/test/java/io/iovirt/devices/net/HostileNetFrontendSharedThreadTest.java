// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.net;

import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/**
 * {@link HostileNetFrontendTest} with the transmit queues of all three ports on ONE shared poll thread
 * ({@code serve net --poll-threads 1}): the attacker's queue fails (an overlong chain), its memory faults, its call
 * eventfd is made blocking and full — and the honest ports, served by the very same thread, keep exchanging frames.
 */
class HostileNetFrontendSharedThreadTest extends HostileNetFrontendTest {
    @Override
    int pollThreads() {
        return 1;
    }

    @Test
    void theThreePortsShareOneThread() throws Exception {
        try (NetDriver a = new NetDriver(pa.options().socket(), BASE, 1);
                NetDriver b = new NetDriver(pb.options().socket(), BASE, 1);
                NetDriver c = new NetDriver(pc.options().socket(), BASE, 1)) {
            VirtioNetPortTest.await(
                    () -> pa.isLinkUp() && pb.isLinkUp() && pc.isLinkUp() && group.queues(0) == 3,
                    "three transmit queues on the shared thread");
            b.postRx(0, 2048, 64);
            c.postRx(0, 2048, 64);
            honestTrafficFlows(b, c, 1);
        }
        VirtioNetPortTest.await(() -> group.queues(0) == 0, "the queues left with their frontends");
        assertEquals(0, group.queues(0));
    }
}
