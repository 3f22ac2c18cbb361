// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.pci.Bdf;
import io.iovirt.pci.SysfsTree;
import picocli.CommandLine;

/** PCI addresses on the command line, for every command that takes one: a bad one is a usage error (exit 2). */
public final class BdfConverter implements CommandLine.ITypeConverter<Bdf> {
    @Override
    public Bdf convert(String value) {
        Bdf b = Bdf.tryParse(value);
        if (b == null) {
            throw new CommandLine.TypeConversionException("'" + SysfsTree.printable(value)
                    + "' is not a PCI address; write it as domain:bus:device.function, e.g. 0000:01:00.1");
        }
        return b;
    }
}
