// SPDX-License-Identifier: Apache-2.0
/**
 * An NVMe driver in Java on the VFIO framework: controller bring-up, admin and one I/O queue pair in IOMMU-mapped
 * memory, Identify, 4 KiB-and-up reads and writes with PRP entries, completions by polling or by MSI-X/MSI/INTx
 * eventfd; namespaces whose LBA format carries metadata or protection information are refused, since commands
 * carry data pointers only. {@link io.iovirt.vfio.nvme.NvmeController} is the driver, {@link io.iovirt.vfio.nvme.NvmeBench} a
 * random-read benchmark on it, {@link io.iovirt.vfio.nvme.IommuCheck} the proof that the IOMMU confines the device.
 */
package io.iovirt.vfio.nvme;
