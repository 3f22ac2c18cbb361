// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

/** A control request failed: a JSON-RPC 2.0 error code and a message that says what to do. */
public final class RpcException extends Exception {
    /** The request line was not JSON. */
    public static final int PARSE_ERROR = -32700;
    /** Not a JSON-RPC 2.0 request object. */
    public static final int INVALID_REQUEST = -32600;

    public static final int METHOD_NOT_FOUND = -32601;
    public static final int INVALID_PARAMS = -32602;
    public static final int INTERNAL_ERROR = -32603;
    /** The operation was valid but failed (an image cannot be opened, a socket path is taken...). */
    public static final int FAILED = -32000;
    /** No device, switch or port has that id. */
    public static final int NOT_FOUND = -32001;
    /** The id is already in use. */
    public static final int EXISTS = -32002;
    /** The caller's uid may not use this socket. */
    public static final int PERMISSION_DENIED = -32003;
    /** The request line exceeded the limit, or the daemon has too many clients. */
    public static final int LIMIT = -32004;

    private final int code;

    public RpcException(int code, String message) {
        super(message, null, false, false);
        this.code = code;
    }

    public int code() {
        return code;
    }

    static RpcException params(String message) {
        return new RpcException(INVALID_PARAMS, message);
    }
}
