// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.testing.Await;
import java.time.Duration;

/**
 * Adding an export again once the claim of one being added or removed has gone: until then its id, socket and image
 * stay taken, and an add of any of them is refused as such ({@link ClaimRegistry}). The one copy of that retry for the
 * daemon's tests.
 */
final class ReAdd {
    /** How long the claim is waited for: a safety net for a loaded machine, not an assertion on speed. */
    static final Duration TIMEOUT = Duration.ofSeconds(60);

    /** An add: returns when accepted, throws when refused. */
    interface Attempt {
        void run() throws Exception;
    }

    private ReAdd() {}

    /**
     * Retries {@code add} until it is accepted, as long as it is refused as {@code refusedAs} ("being added", "being
     * removed"); any other refusal fails at once.
     */
    static void onceTheClaimGoes(String refusedAs, Attempt add) {
        Await.until(TIMEOUT, "the claim of the export " + refusedAs + " to go", () -> {
            try {
                add.run();
                return true;
            } catch (Exception e) {
                assertTrue(
                        String.valueOf(e.getMessage()).contains(refusedAs),
                        "refused as " + refusedAs + ", not as: " + e);
                return false;
            }
        });
    }
}
