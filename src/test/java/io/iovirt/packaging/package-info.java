// SPDX-License-Identifier: Apache-2.0
/**
 * Tests of what the Debian package ships, run the way it is used: the package built with dpkg-deb and installed
 * with dpkg, the shipped daemon configuration, the systemd units' ExecStart lines (expanded as systemd would, with
 * QEMU as Debian's libvirt runs it) and the warm standby pair taking over from a killed member.
 */
package io.iovirt.packaging;
