// SPDX-License-Identifier: Apache-2.0
/**
 * Real QEMU guests for the demo and the tests: building a small guest image (kernel + cpio initramfs), starting
 * QEMU and qemu-storage-daemon as child processes with timeouts, and collecting what the guest reported.
 */
package io.iovirt.vm;
