// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host;

import io.iovirt.util.ActionableException;

/**
 * The host is not set up for what was asked, or refused an operation: carries what failed and the remedy a person
 * can act on. The CLI prints {@link #getMessage()} as one line, never a stack trace. Errors read from sysfs (package
 * {@code pci}) are {@link ActionableException}s too; catch that type to handle both.
 */
public class HostConfigException extends ActionableException {
    public HostConfigException(String problem, String remedy) {
        super(problem, remedy);
    }

    public HostConfigException(String problem, String remedy, Throwable cause) {
        super(problem, remedy, cause);
    }
}
