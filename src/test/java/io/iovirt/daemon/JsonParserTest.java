// SPDX-License-Identifier: Apache-2.0
package io.iovirt.daemon;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.math.BigDecimal;
import java.util.List;
import org.junit.jupiter.api.Test;

/** Numbers in control requests and the configuration file: whatever their size, a value or a syntax error. */
class JsonParserTest {
    @Test
    void numbersBeyondWhatCanBeRepresentedAreSyntaxErrors() {
        for (String n : List.of("1e99999999999", "-1E+99999999999", "1e-99999999999", "[1, 2e99999999999]")) {
            JsonParser.JsonException e = assertThrows(JsonParser.JsonException.class, () -> JsonParser.parse(n), n);
            assertTrue(e.getMessage().contains("out of range") && e.getMessage().contains("offset"), e.getMessage());
        }
    }

    @Test
    void numbersInRangeAreValues() throws Exception {
        assertEquals(42L, JsonParser.parse("42"));
        assertEquals(Long.MIN_VALUE, JsonParser.parse("-9223372036854775808"));
        assertEquals(new BigDecimal("9223372036854775808"), JsonParser.parse("9223372036854775808"));
        assertEquals(new BigDecimal("1e999999999"), JsonParser.parse("1e999999999"));
        assertEquals(new BigDecimal("-2.5E-3"), JsonParser.parse("-2.5E-3"));
    }
}
