// SPDX-License-Identifier: Apache-2.0
/**
 * Real QEMU guests for the demo and the tests: building a small guest image (kernel + cpio initramfs), starting
 * QEMU and qemu-storage-daemon as child processes with timeouts, and collecting what the guest reported.
 * {@link io.iovirt.vm.Accelerator} is the one decision KVM or TCG (used by demo, vm run, host check and the tests);
 * {@link io.iovirt.vm.CoreDump} turns a child's death by signal into a gdb backtrace for the error message.
 */
package io.iovirt.vm;
