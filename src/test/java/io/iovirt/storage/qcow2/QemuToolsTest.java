// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

/** {@link QemuTools#run}, the one runner of the tools the tests start. */
class QemuToolsTest {
    /**
     * Output that is not UTF-8 (a path or message in another encoding) is decoded with replacement characters, as
     * before the output went to a file: Files.readString threw MalformedInputException instead, and the command's
     * exit code and the rest of its output were lost.
     */
    @Test
    void outputThatIsNotUtf8IsReturnedNotThrown() throws Exception {
        QemuTools.Result r = QemuTools.run("printf", "ok \\377\\n");
        assertEquals(0, r.exit());
        assertTrue(r.output().startsWith("ok \uFFFD"), r.output());
    }
}
