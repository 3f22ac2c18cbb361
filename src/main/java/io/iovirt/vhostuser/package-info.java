// SPDX-License-Identifier: Apache-2.0
/**
 * The vhost-user protocol (QEMU docs/interop/vhost-user.rst): a backend server that virtio devices plug into, and a
 * frontend client for drivers without a VM.
 *
 * <p>Serving a device:
 * <pre>{@code
 * VhostUserBackend device = ...;                       // features, queues, config space, queue start/stop
 * try (VhostUserServer server = VhostUserServer.start(Path.of("/run/vub.sock"), device)) {
 *     // QEMU: -chardev socket,id=c0,path=/run/vub.sock -device vhost-user-blk-pci,chardev=c0
 *     ...                                              // serves frontend after frontend until closed
 * }
 * }</pre>
 * The device sees only validated state: {@link io.iovirt.vhostuser.VhostUserBackend#queueStarted} with a
 * {@link io.iovirt.vhostuser.VringSetup} (guest physical ring addresses inside guest memory, kick/call eventfds,
 * the guest memory holder), {@link io.iovirt.vhostuser.VhostUserBackend#queueStopped} when the frontend stops or
 * disables the ring, {@link io.iovirt.vhostuser.VhostUserBackend#memoryChanged} when the memory table changes, and
 * {@link io.iovirt.vhostuser.VhostUserBackend#reset} when the frontend disconnects or resets the device.
 *
 * <p>Layers, top-down: {@link io.iovirt.vhostuser.Connection} frames messages and checks their shape against
 * {@link io.iovirt.vhostuser.MessageType}; {@link io.iovirt.vhostuser.Handler} dispatches each to the component that
 * owns its state — {@link io.iovirt.vhostuser.Negotiation} (features), {@link io.iovirt.vhostuser.MemoryTable}
 * (guest memory regions, frontend addresses) or a {@link io.iovirt.vhostuser.Vring} (one ring's state machine) —
 * and calls the device. A malformed message is a {@link io.iovirt.vhostuser.ProtocolException}: one log line,
 * that connection closed. A request the device refuses is a {@link io.iovirt.vhostuser.BackendException}: a failure
 * reply under REPLY_ACK, the connection stays.
 */
package io.iovirt.vhostuser;
