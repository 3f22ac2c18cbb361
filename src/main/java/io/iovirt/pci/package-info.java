// SPDX-License-Identifier: Apache-2.0
/**
 * PCI as sysfs shows it, shared by host tooling and the VFIO driver: the one address type
 * {@link io.iovirt.pci.Bdf}, the one strict reader of kernel pseudo-filesystems {@link io.iovirt.pci.SysfsTree},
 * functions ({@link io.iovirt.pci.PciDevice}, {@link io.iovirt.pci.PciInventory}, {@link io.iovirt.pci.PciSysfs}),
 * IOMMU groups and the pci.ids names.
 */
package io.iovirt.pci;
