// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.Test;

class JsonTest {
    @Test
    void writesNestedValuesInOrderAndEscapesStrings() {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("name", "a\"b\\c\n\u0001");
        m.put("n", 42L);
        m.put("ok", true);
        m.put("none", null);
        m.put("list", List.of(1, "x"));
        m.put("empty", Map.of());
        assertEquals("""
                {
                  "name": "a\\"b\\\\c\\n\\u0001",
                  "n": 42,
                  "ok": true,
                  "none": null,
                  "list": [
                    1,
                    "x"
                  ],
                  "empty": {}
                }""", Json.write(m));
    }

    @Test
    void oneLineFormKeepsNewlinesInStringsEscaped() {
        assertEquals("{\"a\":[1,\"x\\ny\"]}", Json.writeLine(Map.of("a", List.of(1, "x\ny"))));
    }

    @Test
    void nonFiniteNumbersBecomeNull() {
        assertEquals("[\n  null,\n  null,\n  1.5\n]", Json.write(List.of(Double.NaN, Double.POSITIVE_INFINITY, 1.5)));
    }
}
