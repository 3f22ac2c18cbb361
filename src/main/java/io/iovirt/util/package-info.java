// SPDX-License-Identifier: Apache-2.0
/**
 * The one copy of each small helper: {@link io.iovirt.util.Json} (the writer of every {@code --json}),
 * {@link io.iovirt.util.ByteSizes} (formatting and parsing sizes), {@link io.iovirt.util.LatencyHistogram}
 * (allocation-free latency percentiles), {@link io.iovirt.util.LogLimiter} (log lines a peer can cause at will,
 * rate-limited), {@link io.iovirt.util.StopOnce} (a server's stop, begun once and ended once, whoever calls) and
 * {@link io.iovirt.util.ActionableException} (an error that says what to do).
 */
package io.iovirt.util;
