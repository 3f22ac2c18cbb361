// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import io.iovirt.linux.Fd;
import io.iovirt.linux.LinuxException;
import io.iovirt.linux.MemFd;
import io.iovirt.linux.Mmap;
import java.lang.foreign.MemorySegment;

/**
 * One region of "guest RAM" for a frontend without a VM (benchmarks, tests): a sealed memfd mapped shared, so the
 * backend sees the same bytes. Its frontend virtual address is the mapping's address, as in QEMU.
 */
public final class FrontendMemory implements AutoCloseable {
    private final long guestPhysAddr;
    private final Fd fd;
    private final Mmap.Mapping mapping;

    private FrontendMemory(long guestPhysAddr, Fd fd, Mmap.Mapping mapping) {
        this.guestPhysAddr = guestPhysAddr;
        this.fd = fd;
        this.mapping = mapping;
    }

    /** {@code size} bytes (zeroed) at guest physical address {@code guestPhysAddr}. */
    public static FrontendMemory allocate(long guestPhysAddr, long size) throws LinuxException {
        return allocate(guestPhysAddr, size, true);
    }

    /**
     * {@code size} bytes (zeroed) at guest physical address {@code guestPhysAddr}; unsealed (as QEMU's memfds are)
     * when {@code seal} is false, so a test can play a frontend that truncates the file under the backend.
     */
    public static FrontendMemory allocate(long guestPhysAddr, long size, boolean seal) throws LinuxException {
        Fd fd = MemFd.allocate("iovirt-guest-ram", size);
        try {
            if (seal) {
                MemFd.addSeals(fd, MemFd.F_SEAL_GROW | MemFd.F_SEAL_SHRINK | MemFd.F_SEAL_SEAL);
            }
            Mmap.Mapping m = Mmap.map(fd, 0, size, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED);
            return new FrontendMemory(guestPhysAddr, fd, m);
        } catch (LinuxException | RuntimeException e) {
            fd.close();
            throw e;
        }
    }

    public long guestPhysAddr() {
        return guestPhysAddr;
    }

    public long size() {
        return mapping.segment().byteSize();
    }

    /** The frontend virtual address of the region's first byte (what SET_VRING_ADDR refers to). */
    public long userAddr() {
        return mapping.segment().address();
    }

    public MemorySegment segment() {
        return mapping.segment();
    }

    public Fd fd() {
        return fd;
    }

    /** The frontend virtual address of guest physical address {@code gpa} in this region. */
    public long userAddrOf(long gpa) {
        long off = gpa - guestPhysAddr;
        if (off < 0 || off >= size()) {
            throw new IllegalArgumentException(String.format("GPA 0x%x is outside this region", gpa));
        }
        return userAddr() + off;
    }

    /** The region as the memory table describes it (offset 0 in the memfd). */
    public VhostUserFrontend.RegionDescriptor descriptor() {
        return new VhostUserFrontend.RegionDescriptor(guestPhysAddr, size(), userAddr(), 0, fd);
    }

    @Override
    public void close() {
        mapping.close();
        fd.close();
    }
}
