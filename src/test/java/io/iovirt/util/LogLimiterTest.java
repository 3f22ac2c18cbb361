// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.List;
import java.util.ResourceBundle;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.function.Supplier;
import org.junit.jupiter.api.Test;

/**
 * A {@link LogLimiter} spends its tokens on lines that are shown only: lines of a level the logger drops (INFO under
 * {@code --log-level warn}) neither use up the bucket nor count as suppressed. Before, a client connecting and
 * hanging up in a loop (an INFO line each, not shown) emptied the bucket, and the WARNING lines the operator asked
 * for (a refused uid, a protocol violation) were dropped as "similar lines".
 */
class LogLimiterTest {

    /** A logger that shows WARNING and above, as {@code --log-level warn} does, and keeps what it shows. */
    static final class WarningLogger implements System.Logger {
        final List<String> shown = new CopyOnWriteArrayList<>();

        @Override
        public String getName() {
            return "test";
        }

        @Override
        public boolean isLoggable(Level level) {
            return level.getSeverity() >= Level.WARNING.getSeverity();
        }

        @Override
        public void log(Level level, ResourceBundle bundle, String msg, Throwable thrown) {
            if (isLoggable(level)) {
                shown.add(msg);
            }
        }

        @Override
        public void log(Level level, ResourceBundle bundle, String format, Object... params) {
            if (isLoggable(level)) {
                shown.add(format);
            }
        }

        @Override
        public void log(Level level, Supplier<String> supplier) {
            if (isLoggable(level)) {
                shown.add(supplier.get());
            }
        }
    }

    @Test
    void linesOfADisabledLevelDoNotSilenceTheShownOnes() {
        WarningLogger logger = new WarningLogger();
        LogLimiter limiter = new LogLimiter(logger);
        for (int round = 0; round < 3; round++) {
            // more hidden lines than a full bucket holds, right before the line that is shown
            for (int i = 0; i <= LogLimiter.BURST; i++) {
                limiter.log(System.Logger.Level.INFO, "client #" + i + ": client disconnected in the handshake");
            }
            limiter.log(System.Logger.Level.WARNING, "refused a client with uid " + round);
        }
        assertEquals(
                List.of("refused a client with uid 0", "refused a client with uid 1", "refused a client with uid 2"),
                logger.shown,
                "every WARNING is shown, none counts the INFO lines nobody saw as suppressed");
    }
}
