// SPDX-License-Identifier: Apache-2.0
package io.iovirt.testing;

import io.iovirt.daemon.Daemon;
import io.iovirt.daemon.RpcException;
import java.nio.file.Path;
import java.util.Map;

/** Requests to an in-process {@link Daemon} that several tests make alike. */
public final class DaemonCalls {
    private DaemonCalls() {}

    /** net.port.add: port {@code id} of kind {@code kind} ("stream", "vhost-user") on switch {@code net} at path. */
    public static Object portAdd(Daemon d, String net, String id, String kind, Path path) throws RpcException {
        return d.call("net.port.add", Map.of("net", net, "id", id, "kind", kind, "path", path.toString()));
    }
}
