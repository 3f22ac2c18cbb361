// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Path;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The claims of exports being removed: when their id, socket and image go. */
class ClaimRegistryTest {
    private final Object lock = new Object();
    private final ClaimRegistry claims = new ClaimRegistry(lock, id -> false);

    /**
     * An export whose image was left open and locked when it was removed (its close thread could not be started while
     * a thread of it could still use the image) keeps its id, socket and image: an add of any of them is refused,
     * saying why, instead of being accepted and then fenced at its frontend's start by the lock the image left open
     * still holds (or, for a socket its server has not removed, served beside it). The daemon's stop does not wait for
     * it, and names it among what it exits without. It was released as if its image had been closed.
     */
    @Test
    void aRemovalThatLeftItsImageOpenKeepsItsClaim() throws Exception {
        ImageRelease.Closing closing = removing("a");
        closing.flushed.completeExceptionally(
                new ImageRelease.LeftOpen("its close thread cannot be started (test)", new OutOfMemoryError("test")));
        for (ClaimRegistry.Claim again :
                List.of(claim("a", "b.sock", "b.raw"), claim("b", "a.sock", "b.raw"), claim("b", "b.sock", "a.raw"))) {
            RpcException e = assertThrows(RpcException.class, () -> claims.claim(again), again.who);
            assertEquals(RpcException.EXISTS, e.code(), e.getMessage());
            assertTrue(e.getMessage().contains("left open and locked"), e.getMessage());
        }
        assertEquals(List.of("blk 'a'"), claims.awaitRemovals(System.nanoTime()), "named, not waited for");
    }

    /** An export whose image was closed, or whose close failed, lets go of its claim: it may be added again. */
    @Test
    void aRemovalThatEndedLetsGoOfItsClaim() throws Exception {
        removing("a").flushed.complete(true);
        removing("b").flushed.completeExceptionally(new IllegalStateException("its close failed (test)"));
        claims.claim(claim("a", "a.sock", "a.raw"));
        claims.claim(claim("b", "b.sock", "b.raw"));
    }

    /** Export {@code id} (its socket and image named after it) added, then being removed; its close, not ended. */
    private ImageRelease.Closing removing(String id) throws RpcException {
        ClaimRegistry.Claim c = claims.claim(claim(id, id + ".sock", id + ".raw"));
        ClaimRegistry.Claim r;
        synchronized (lock) {
            claims.activate(c);
            r = claims.removing(id);
        }
        ImageRelease.Closing closing = new ImageRelease.Closing("blk " + id, Path.of("/nonexistent", id + ".raw"));
        claims.releaseWhenClosed(r, closing);
        return closing;
    }

    private static ClaimRegistry.Claim claim(String id, String socket, String image) {
        return new ClaimRegistry.Claim(
                null,
                id,
                "blk '" + id + "'",
                Path.of("/nonexistent", socket),
                null,
                Path.of("/nonexistent", image),
                false);
    }
}
