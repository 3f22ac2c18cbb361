// SPDX-License-Identifier: Apache-2.0
package io.iovirt.host.assign;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.host.CliRun;
import io.iovirt.host.HostConfigException;
import io.iovirt.pci.Bdf;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.PosixFilePermissions;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

class MigrateConfigTest {
    @TempDir
    Path tmp;

    private static final String QEMU_SCRIPT = """
            #!/bin/sh
            exec qemu-system-x86_64 -enable-kvm -m 4096 \\
              -device pci-assign,host=01:00.0,id=hostdev0,configfd=12,addr=0x5 \\
              -device 'kvm-pci-assign,host=0000:02:00.1,prefer_msi=on,share_intx=off,iommu=0,romfile=/r.rom' \\
              -pcidevice host=03:00.0 \\
              -drive file=disk.img,if=virtio
            """;

    private static final String LIBVIRT = """
            <domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
              <name>legacy</name>
              <devices>
                <!-- the NIC -->
                <hostdev mode='subsystem' type='pci' managed='yes'>
                  <driver name='kvm'/>
                  <source>
                    <address domain='0x0000' bus='0x06' slot='0x00' function='0x0'/>
                  </source>
                </hostdev>
                <interface type='hostdev' managed='yes'>
                  <driver name="kvm"/>
                  <source><address type='pci' domain='0x0000' bus='0x07' slot='0x10' function='0x1'/></source>
                </interface>
                <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/d.img'/><target dev='vda'/></disk>
                <interface type='network'><driver name='kvm'/><source network='default'/></interface>
              </devices>
              <qemu:commandline>
                <qemu:arg value='-device'/>
                <qemu:arg value='pci-assign,host=08:00.0,id=extra'/>
              </qemu:commandline>
            </domain>
            """;

    @Test
    void qemuCommandLineBecomesVfio() {
        LegacyAssignmentMigrator.Migration m = LegacyAssignmentMigrator.migrate(QEMU_SCRIPT);
        assertEquals("qemu", m.format());
        assertTrue(m.text().contains("-device vfio-pci,host=0000:01:00.0,id=hostdev0,addr=0x5 \\"), m.text());
        assertTrue(m.text().contains("-device 'vfio-pci,host=0000:02:00.1,romfile=/r.rom' \\"), m.text());
        assertTrue(m.text().contains("-device vfio-pci,host=0000:03:00.0 \\"), m.text());
        assertTrue(m.text().contains("-drive file=disk.img,if=virtio"), "other arguments untouched");
        assertFalse(m.text().contains("pci-assign") || m.text().contains("pcidevice"), m.text());
        assertEquals(3, m.changes().size(), m.changes().toString());
        assertTrue(m.changes().get(0).contains("dropped configfd"), m.changes().get(0));
        assertTrue(
                m.changes().get(1).contains("dropped iommu=0 (VFIO always isolates"),
                m.changes().get(1));
    }

    @Test
    void libvirtKvmDriverBecomesVfioAndNothingElseChanges() {
        LegacyAssignmentMigrator.Migration m = LegacyAssignmentMigrator.migrate(LIBVIRT);
        assertEquals("libvirt", m.format());
        String expected = LIBVIRT.replace(
                        "<hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='kvm'/>",
                        "<hostdev mode='subsystem' type='pci' managed='yes'>\n      <driver name='vfio'/>")
                .replace("<driver name=\"kvm\"/>", "<driver name=\"vfio\"/>")
                .replace("pci-assign,host=08:00.0,id=extra", "vfio-pci,host=0000:08:00.0,id=extra");
        assertEquals(expected, m.text());
        // A network interface's <driver name='kvm'/> is not device assignment and stays.
        assertTrue(m.text().contains("<interface type='network'><driver name='kvm'/>"));
        assertEquals(3, m.changes().size(), m.changes().toString());
    }

    @Test
    void brokenXmlIsRefused() {
        HostConfigException e = assertThrows(
                HostConfigException.class,
                () -> LegacyAssignmentMigrator.migrate("<domain><devices><hostdev></devices>"));
        assertTrue(e.getMessage().contains("is not well-formed XML"), e.getMessage());
        assertThrows(
                HostConfigException.class,
                () -> LegacyAssignmentMigrator.migrate(
                        "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>"));
    }

    @Test
    void cliWritesInPlaceWithBackup() throws Exception {
        Path f = tmp.resolve("vm.xml");
        Files.writeString(f, LIBVIRT);
        CliRun r = CliRun.run(List.of("host", "migrate-config", f.toString(), "--in-place"));
        assertEquals(0, r.exit(), r.err());
        assertTrue(r.err().contains("migrated: hostdev <address domain='0x0000' bus='0x06'"), r.err());
        assertEquals(LIBVIRT, Files.readString(tmp.resolve("vm.xml.bak")));
        assertTrue(Files.readString(f).contains("<driver name='vfio'/>"));
        CliRun again = CliRun.run(List.of("host", "migrate-config", f.toString()));
        assertTrue(again.err().contains("no legacy KVM assignment found"), again.err());
        assertEquals(Files.readString(f), again.out());
    }

    /**
     * A domain XML is often 0600 (it can hold VNC and iSCSI secrets): the rewritten file and its backup keep the
     * original's mode instead of the umask's 0644, a symbolic link stays a link to the rewritten file, and nothing
     * is left beside them.
     */
    @Test
    void inPlaceKeepsTheModeAndTheLink() throws Exception {
        Path f = tmp.resolve("vm.xml");
        Files.writeString(f, LIBVIRT);
        Files.setPosixFilePermissions(f, PosixFilePermissions.fromString("rw-r-----"));
        Path link = Files.createSymbolicLink(tmp.resolve("current.xml"), f.getFileName());
        CliRun r = CliRun.run(List.of("host", "migrate-config", link.toString(), "--in-place"));
        assertEquals(0, r.exit(), r.err());
        assertTrue(Files.isSymbolicLink(link), "the link was replaced by a file");
        assertTrue(Files.readString(f).contains("<driver name='vfio'/>"));
        assertEquals("rw-r-----", PosixFilePermissions.toString(Files.getPosixFilePermissions(f)));
        Path bak = tmp.resolve("current.xml.bak");
        assertEquals(LIBVIRT, Files.readString(bak));
        assertEquals("rw-r-----", PosixFilePermissions.toString(Files.getPosixFilePermissions(bak)));
        try (var files = Files.list(tmp)) {
            assertEquals(
                    List.of("current.xml", "current.xml.bak", "vm.xml"),
                    files.map(p -> p.getFileName().toString()).sorted().toList());
        }
    }

    @Test
    void vfioConfigOutput() {
        assertEquals(
                List.of(
                        "-device",
                        "vfio-pci,host=0000:01:00.1,id=hostdev0",
                        "-device",
                        "vfio-pci,host=0000:01:00.2,id=hostdev1"),
                VfioConfig.qemuArgs(List.of(Bdf.parse("01:00.1"), Bdf.parse("01:00.2"))));
        String xml = VfioConfig.libvirtHostdev(Bdf.parse("0000:81:10.3"));
        assertTrue(xml.contains("<hostdev mode='subsystem' type='pci' managed='no'>"));
        assertTrue(xml.contains("<driver name='vfio'/>"));
        assertTrue(xml.contains("<address domain='0x0000' bus='0x81' slot='0x10' function='0x3'/>"));
    }
}
