// SPDX-License-Identifier: Apache-2.0
/**
 * Test fixtures shared by every test package: {@link io.iovirt.testing.Await} (the one bounded wait with a message),
 * {@link io.iovirt.testing.Require} (a missing prerequisite fails the test with the reason and the remedy; nothing is
 * skipped), {@link io.iovirt.testing.GuestFixture} (guest RAM in two regions with canary-filled guards, for rings and
 * buffers; the driver side of the rings is {@code io.iovirt.virtio.SplitDriverRing}/{@code PackedDriverRing}),
 * {@link io.iovirt.testing.Frames} (Ethernet frames) and {@link io.iovirt.testing.Accesses} (address ranges around a
 * region, for properties of range checks), {@link io.iovirt.testing.ClassPathCopy} (this build's code where a child JVM
 * run as another user can read it), {@link io.iovirt.testing.Fifo} (a FIFO where an image is expected: a test that
 * an open does not wait on it), {@link io.iovirt.testing.DirectoryReads} (a fixture directory whose listings are
 * counted: how often code reads a tree). Real-guest and real-peer tests carry {@code @Tag("guest")} or
 * {@code @Tag("peer")} and run in Failsafe (see the pom).
 */
package io.iovirt.testing;
