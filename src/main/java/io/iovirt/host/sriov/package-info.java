// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt host vfs}: SR-IOV virtual functions through sriov_numvfs, and the per-VF provisioning an NVMe
 * physical function needs before its secondary controllers work.
 */
package io.iovirt.host.sriov;
