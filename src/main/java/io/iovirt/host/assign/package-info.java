// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt host assign/release/assignments/config}: which VM owns which PCI function (one VM per IOMMU group),
 * the readiness report of {@code host devices}, the QEMU and libvirt configuration of an assignment, and the
 * migration of legacy KVM assignment to VFIO.
 */
package io.iovirt.host.assign;
