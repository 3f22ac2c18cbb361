// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import com.code_intelligence.jazzer.junit.FuzzTest;
import io.iovirt.linux.UnixSocket;
import java.io.IOException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;

/**
 * Fuzzes the vhost-user message decoder ({@link Connection}) and the protocol state machine ({@link Handler}) with
 * a device behind it: the fuzzer's bytes are the stream a frontend writes (headers, payloads, any number of
 * messages), received over a real socket pair. A frontend may make the backend refuse (a {@link ProtocolException}
 * or another IOException closes the connection); anything else thrown is a bug. Descriptors cannot travel in a byte
 * stream, so messages that need them exercise the fd-count checks. Seeds:
 * src/test/resources/io/iovirt/vhostuser/VhostUserFuzzTestInputs/.
 */
class VhostUserFuzzTest {
    /** Bounded so the replies always fit the socket buffer: the handler never blocks on a reply nobody reads. */
    static final int MAX_INPUT = 8192;

    @FuzzTest(maxDuration = "10s")
    void messages(byte[] data) throws Exception {
        int n = Math.min(data.length, MAX_INPUT);
        UnixSocket[] pair = UnixSocket.pair();
        try (Arena a = Arena.ofConfined()) {
            MemorySegment in = a.allocate(Math.max(n, 1));
            MemorySegment.copy(MemorySegment.ofArray(data), 0, in, 0, n);
            if (n > 0) {
                pair[0].send(in.asSlice(0, n));
            }
            pair[0].shutdown(UnixSocket.SHUT_WR);
            Connection c = new Connection(pair[1], Connection.Role.BACKEND, "fuzz");
            Handler h = new Handler(new RecordingBackend(2, Features.bit(Features.PROTOCOL_RARP)), "fuzz");
            try {
                Message m;
                while ((m = c.receiveRequest()) != null) {
                    h.handle(m, c);
                }
            } catch (IOException refused) {
                // ProtocolException and friends: the connection would be closed; that is the expected outcome
            } finally {
                h.close();
                c.close();
            }
        } finally {
            pair[0].close();
            pair[1].close();
        }
    }
}
