// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt host bind/unbind/reset}: moves PCI functions between host drivers and vfio-pci with
 * driver_override, refusing (unless forced) when the host uses the device or its IOMMU group would not be viable.
 */
package io.iovirt.host.binding;
