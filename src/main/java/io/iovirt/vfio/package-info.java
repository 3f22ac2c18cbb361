// SPDX-License-Identifier: Apache-2.0
/**
 * A user-space driver framework over the kernel's VFIO: a device bound to vfio-pci is owned from Java, its registers
 * are mapped into the process, and it may DMA only into memory the IOMMU was told about.
 *
 * <p>Opening follows the kernel's order — {@link io.iovirt.vfio.VfioContainer} (the IOMMU context, type1v2),
 * {@link io.iovirt.vfio.VfioGroup} (viability, attach), {@link io.iovirt.vfio.VfioDevice} (regions, config space,
 * interrupts wired to eventfds) — and {@link io.iovirt.vfio.VfioSession} does it in one call and releases in the
 * safe order: device (vfio-pci resets it), DMA mappings (unmapped before their memory is freed), group, container.
 * Drivers put everything the device may touch in a {@link io.iovirt.vfio.DmaArena} at a chosen IOVA, and hear
 * through {@link io.iovirt.vfio.DeviceRequest} when the host wants the device back.
 *
 * <p>DMA mappings go through {@link io.iovirt.vfio.IommuBackend}: the type1 container is the backend Linux 6.1 has;
 * iommufd ({@code /dev/iommu}, 6.2+) with VFIO device cdevs (6.6+) is detected by
 * {@link io.iovirt.vfio.IommuEnvironment} and would be a second backend. The structs are MemoryLayouts whose offsets
 * are tested against the kernel header; the only native calls are those of {@code io.iovirt.linux}.
 */
package io.iovirt.vfio;
