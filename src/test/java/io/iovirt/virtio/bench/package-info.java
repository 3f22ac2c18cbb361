// SPDX-License-Identifier: Apache-2.0
/**
 * JMH benchmarks of the virtqueue data path (one request through both sides of a ring, with and without dirty
 * logging); run by hand, not by the test suite (docs/benchmarks.md has the commands and the results).
 */
package io.iovirt.virtio.bench;
