// SPDX-License-Identifier: Apache-2.0
package io.iovirt.devices.blk;

/** The real-guest blk suite against {@code iovirt serve blk}, started as its own process like a user would. */
class IovirtVhostUserBlkGuestTest extends VhostUserBlkGuestTest {

    @Override
    protected BlkBackendUnderTest backend() {
        return BlkBackendUnderTest.iovirt("iovirt");
    }
}
