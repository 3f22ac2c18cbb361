// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt vm run}: composes one QEMU command line from a VM spec — vhost-user disks and NICs served by this
 * process, and VFIO devices assigned through {@link io.iovirt.host.assign}.
 */
package io.iovirt.vm.compose;
