// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import io.iovirt.host.HostConfigException;
import io.iovirt.pci.Bdf;
import java.io.ByteArrayInputStream;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import javax.xml.XMLConstants;
import javax.xml.parsers.DocumentBuilderFactory;

/**
 * Rewrites legacy KVM device assignment — QEMU's {@code pci-assign} / {@code kvm-pci-assign} / {@code -pcidevice},
 * libvirt's {@code <driver name='kvm'/>} — to VFIO, which replaced it (legacy assignment was removed from QEMU 2.12
 * and the kernel 4.12). Only the assignment parts change; every other byte of the file stays as it was.
 */
public final class LegacyAssignmentMigrator {
    /** The rewritten text and one line per change (or note) for the administrator. */
    public record Migration(String format, String text, List<String> changes) {
        public boolean changed() {
            return !changes.isEmpty();
        }
    }

    // -device [quote]pci-assign,opts[quote]   and   -pcidevice host=...
    private static final Pattern QEMU_DEVICE =
            Pattern.compile("(-device\\s+['\"]?)(?:kvm-)?pci-assign((?:,[^\\s'\"]*)?)");
    private static final Pattern QEMU_PCIDEVICE = Pattern.compile("-pcidevice(\\s+['\"]?)([^\\s'\"]+)");
    private static final Pattern QEMU_ARG_XML =
            Pattern.compile("(<qemu:arg\\s+value=(['\"]))(?:kvm-)?pci-assign((?:,[^'\"]*)?)(?=\\2)");
    private static final Pattern HOSTDEV_BLOCK = Pattern.compile(
            "<hostdev\\b[^>]*>.*?</hostdev>|<interface\\b[^>]*type=(['\"])hostdev\\1[^>]*>.*?</interface>",
            Pattern.DOTALL);
    private static final Pattern KVM_DRIVER = Pattern.compile("(<driver\\b[^>]*?\\bname=)(['\"])kvm\\2");

    private LegacyAssignmentMigrator() {}

    public static Migration migrate(String text) {
        String trimmed = text.stripLeading();
        if (trimmed.startsWith("<")) {
            return migrateLibvirt(text);
        }
        return migrateQemu(text);
    }

    static Migration migrateQemu(String text) {
        List<String> changes = new ArrayList<>();
        String out = replace(QEMU_DEVICE, text, m -> m.group(1) + "vfio-pci" + rewriteOptions(m.group(2), changes));
        out = replace(
                QEMU_PCIDEVICE,
                out,
                m -> "-device" + m.group(1) + "vfio-pci" + rewriteOptions("," + m.group(2), changes));
        return new Migration("qemu", out, changes);
    }

    static Migration migrateLibvirt(String text) {
        checkWellFormed(text, "the input");
        List<String> changes = new ArrayList<>();
        String out = replace(
                HOSTDEV_BLOCK,
                text,
                block -> replace(KVM_DRIVER, block.group(), d -> {
                    changes.add(describeHostdev(block.group()) + ": <driver name='kvm'/> -> <driver name='vfio'/>");
                    return d.group(1) + d.group(2) + "vfio" + d.group(2);
                }));
        out = replace(QEMU_ARG_XML, out, m -> m.group(1) + "vfio-pci" + rewriteOptions(m.group(3), changes));
        checkWellFormed(out, "the rewritten document");
        return new Migration("libvirt", out, changes);
    }

    /** Maps pci-assign options to vfio-pci's: host= gets a full address, legacy-only options are dropped. */
    private static String rewriteOptions(String opts, List<String> changes) {
        StringBuilder b = new StringBuilder();
        String host = "?";
        List<String> notes = new ArrayList<>();
        for (String opt : opts.split(",")) {
            if (opt.isEmpty()) {
                continue;
            }
            int eq = opt.indexOf('=');
            String key = eq < 0 ? opt : opt.substring(0, eq);
            String value = eq < 0 ? "" : opt.substring(eq + 1);
            switch (key) {
                case "host" -> {
                    Bdf bdf = Bdf.tryParse(value);
                    host = bdf == null ? value : bdf.toString();
                    if (bdf == null) {
                        notes.add("host=" + value + " is not a PCI address: check it");
                    }
                    b.append(",host=").append(host);
                }
                case "configfd" -> notes.add("dropped configfd (legacy assignment only; VFIO opens the device itself)");
                case "prefer_msi" -> notes.add("dropped prefer_msi (vfio-pci uses MSI/MSI-X as the device offers)");
                case "share_intx" -> notes.add("dropped share_intx (vfio-pci handles shared INTx itself)");
                case "iommu" ->
                    notes.add("dropped iommu=" + value + " (VFIO always isolates the device through the IOMMU)");
                default -> b.append(',').append(opt);
            }
        }
        changes.add(
                "pci-assign " + host + " -> vfio-pci" + (notes.isEmpty() ? "" : " (" + String.join("; ", notes) + ")"));
        return b.toString();
    }

    private static String describeHostdev(String block) {
        Matcher m = Pattern.compile("<address\\b[^>]*>").matcher(block);
        return m.find() ? "hostdev " + m.group() : "hostdev";
    }

    private interface Rewrite {
        String apply(Matcher m);
    }

    private static String replace(Pattern p, String text, Rewrite r) {
        Matcher m = p.matcher(text);
        StringBuilder b = new StringBuilder();
        while (m.find()) {
            m.appendReplacement(b, Matcher.quoteReplacement(r.apply(m)));
        }
        m.appendTail(b);
        return b.toString();
    }

    private static void checkWellFormed(String xml, String what) {
        try {
            DocumentBuilderFactory f = DocumentBuilderFactory.newInstance();
            f.setFeature(XMLConstants.FEATURE_SECURE_PROCESSING, true);
            f.setFeature("http://apache.org/xml/features/disallow-doctype-decl", true);
            f.setNamespaceAware(false);
            var builder = f.newDocumentBuilder();
            builder.setErrorHandler(new org.xml.sax.helpers.DefaultHandler() {
                @Override
                public void fatalError(org.xml.sax.SAXParseException e) throws org.xml.sax.SAXException {
                    throw e;
                }
            });
            builder.parse(new ByteArrayInputStream(xml.getBytes(StandardCharsets.UTF_8)));
        } catch (Exception e) {
            throw new HostConfigException(
                    what + " is not well-formed XML: " + e.getMessage(),
                    "pass a libvirt domain XML (virsh dumpxml NAME) or a QEMU command line");
        }
    }
}
