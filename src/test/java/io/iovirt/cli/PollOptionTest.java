// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** The poll-us values serve blk and serve net take. */
class PollOptionTest {
    @Test
    void everyFormParsesAndNothingElseDoes() {
        assertEquals(new PollOption(32, true), PollOption.parse("adaptive"));
        assertEquals(new PollOption(100, true), PollOption.parse("adaptive:100"));
        assertEquals(new PollOption(50, false), PollOption.parse("50"));
        assertEquals(new PollOption(0, false), PollOption.parse("0"));
        assertEquals(new PollOption(0, false), PollOption.parse("adaptive:0"), "a bound of 0 is no polling");
        for (String bad : new String[] {"", "adaptive:", "adaptivex", "fast", "-1", "1000001", "adaptive:-5", "1e3"}) {
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> PollOption.parse(bad), bad);
            assertTrue(e.getMessage().contains("poll-us"), e.getMessage());
        }
    }
}
