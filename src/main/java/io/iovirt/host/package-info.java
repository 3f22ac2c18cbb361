// SPDX-License-Identifier: Apache-2.0
/**
 * Host set-up for device assignment, split by concern: {@link io.iovirt.host.check} (is this host ready for each
 * technique), {@link io.iovirt.host.binding} (moving a PCI function between host drivers and vfio-pci),
 * {@link io.iovirt.host.sriov} (creating virtual functions) and {@link io.iovirt.host.assign} (which VM owns which
 * function). This package holds what they share: where the kernel interfaces and iovirt's state live
 * ({@link io.iovirt.host.HostPaths}), what the host itself uses a device for ({@link io.iovirt.host.HostUsage}),
 * the crash-safe state tables ({@link io.iovirt.host.StateStore}) and the error type.
 */
package io.iovirt.host;
