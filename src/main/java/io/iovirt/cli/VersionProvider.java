// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import java.io.IOException;
import java.io.InputStream;
import java.util.Properties;
import picocli.CommandLine;

/** {@code iovirt --version}: the version and the git commit the build was made from (version.properties). */
final class VersionProvider implements CommandLine.IVersionProvider {
    @Override
    public String[] getVersion() throws IOException {
        Properties p = new Properties();
        try (InputStream in = VersionProvider.class.getResourceAsStream("version.properties")) {
            if (in != null) {
                p.load(in);
            }
        }
        String version = p.getProperty("version", "unknown");
        String commit = p.getProperty("commit", "unknown");
        return new String[] {
            "iovirt " + version + " (commit " + (commit.startsWith("${") ? "unknown" : commit) + ")",
            "Java " + Runtime.version() + ", " + System.getProperty("os.name") + " " + System.getProperty("os.arch")
        };
    }
}
