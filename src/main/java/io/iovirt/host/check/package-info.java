// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt host check}: the host's readiness for each of the five I/O virtualization techniques, one result
 * per requirement with a remedy. Reads only.
 */
package io.iovirt.host.check;
