// SPDX-License-Identifier: Apache-2.0
/**
 * NVMe data structures and admin commands shared by the kernel passthrough path ({@link io.iovirt.nvme.NvmeAdmin},
 * used for SR-IOV provisioning) and the user-space driver ({@code io.iovirt.vfio.nvme}): one Identify parser.
 */
package io.iovirt.nvme;
