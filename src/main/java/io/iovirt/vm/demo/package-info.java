// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt demo}: boots guests against iovirt's backends and QEMU's own, and compares them with fio and a
 * network transfer, on the same host, in one run.
 */
package io.iovirt.vm.demo;
