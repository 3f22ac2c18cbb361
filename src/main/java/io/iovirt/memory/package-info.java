// SPDX-License-Identifier: Apache-2.0
/**
 * Guest memory as the backend sees it: regions a frontend shared as file descriptors, mapped into the process,
 * translated from guest-physical addresses with bounds checks, and replaced safely while queues run.
 */
package io.iovirt.memory;
