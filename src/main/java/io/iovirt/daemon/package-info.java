// SPDX-License-Identifier: Apache-2.0
/**
 * {@code iovirt daemon}: one process hosting many devices (vhost-user-blk exports, NBD exports, switches and their
 * ports), each with its own threads, managed through a JSON-RPC 2.0 control socket ({@link io.iovirt.daemon.RpcServer},
 * methods in {@link io.iovirt.daemon.Daemon}, documented in docs/api.md), described by a configuration file re-read on
 * SIGHUP, the devices added through the API kept across restarts in a state file ({@code StateFile}),
 * observed through Prometheus metrics ({@link io.iovirt.daemon.Metrics}) and supervised by systemd
 * (sd_notify through {@link io.iovirt.linux.SdNotify}).
 */
package io.iovirt.daemon;
