// SPDX-License-Identifier: Apache-2.0
/**
 * Drivers without a VM that load a backend and measure it: {@link io.iovirt.bench.VhostUserBlkDriver} is a
 * vhost-user frontend written for benchmarking (it maps its own guest memory and drives the rings itself), and
 * {@link io.iovirt.bench.BlkBench} runs it against iovirt or qemu-storage-daemon and reports IOPS, latency
 * percentiles ({@link io.iovirt.util.LatencyHistogram}) and CPU per request. The command is {@code cli.BlkBenchCommand}.
 */
package io.iovirt.bench;
