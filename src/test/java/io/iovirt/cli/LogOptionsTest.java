// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.SplittableRandom;
import org.junit.jupiter.api.Test;

class LogOptionsTest {
    private static final DateTimeFormatter ISO_MILLIS =
            DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    private static void check(long millis) {
        assertEquals(ISO_MILLIS.format(Instant.ofEpochMilli(millis)), LogOptions.utc(millis), "epoch ms " + millis);
    }

    @Test
    void timestampsAreIso8601UtcWithMilliseconds() {
        assertEquals("1970-01-01T00:00:00.000Z", LogOptions.utc(0));
        assertEquals(
                "2026-12-03T10:34:12.123Z",
                LogOptions.utc(Instant.parse("2026-12-03T10:34:12.123Z").toEpochMilli()));
        for (String edge : new String[] {
            "1969-12-31T23:59:59.999Z",
            "2000-02-29T12:00:00.001Z",
            "2000-03-01T00:00:00Z",
            "2100-02-28T23:59:59.999Z",
            "2100-03-01T00:00:00Z",
            "2024-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999Z",
            "0001-01-01T00:00:00Z"
        }) {
            check(Instant.parse(edge).toEpochMilli());
        }
        SplittableRandom r = new SplittableRandom(42);
        for (int i = 0; i < 100_000; i++) {
            check(r.nextLong(-62_135_596_800_000L, 253_402_300_800_000L));
        }
    }
}
