// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vfio;

import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_SHORT;

import io.iovirt.linux.LinuxException;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.ArrayList;
import java.util.List;

/**
 * Asks for an info struct with the capability chain VFIO appends to it ({@link #query}: again with a larger buffer
 * when the chain did not fit), and walks the chain ({@code struct vfio_info_cap_header}: id, version, and {@code
 * next}, the offset of the next header from the start of the info struct, 0 at the end).
 *
 * <p>The chain comes from the kernel, but it is still walked defensively: every header must lie after the fixed part
 * of the struct and inside the buffer, and a chain longer than {@link #MAX_CAPS} (a loop) is refused.
 */
final class InfoCapabilities {
    static final int MAX_CAPS = 64;
    static final long HEADER_SIZE = VfioAbi.INFO_CAP_HEADER.byteSize();

    /** One capability: its id, version, and the slice of the buffer from its header to the end of the buffer. */
    record Cap(int id, int version, long offset, MemorySegment data) {}

    /** Fills what an info request carries besides argsz (set already) and issues the ioctl. */
    @FunctionalInterface
    interface Request {
        void issue(MemorySegment info) throws LinuxException;
    }

    /** Reads the kernel's answer: the whole info buffer, its capability chain included. */
    @FunctionalInterface
    interface Answer<T> {
        T read(MemorySegment info) throws VfioException;
    }

    private InfoCapabilities() {}

    /**
     * Runs a VFIO info ioctl whose capability chain may not fit the buffer: asks with argsz {@code fixedSize} (the
     * struct's fixed part), and while the kernel sets {@code capsFlag} in the flags and names a larger argsz, asks
     * again with that size (up to 1 MiB, four times at the most). {@code what} starts the errors; the ioctl's own
     * failure is thrown as it is.
     */
    static <T> T query(long fixedSize, int capsFlag, String what, Request request, Answer<T> answer)
            throws VfioException, LinuxException {
        long argsz = fixedSize;
        for (int attempt = 0; attempt < 4; attempt++) {
            try (Arena a = Arena.ofConfined()) {
                MemorySegment info = a.allocate(argsz, 8);
                info.set(JAVA_INT, VfioAbi.ARGSZ, (int) argsz);
                request.issue(info);
                long want = Integer.toUnsignedLong(info.get(JAVA_INT, VfioAbi.ARGSZ));
                if ((info.get(JAVA_INT, VfioAbi.FLAGS) & capsFlag) != 0 && want > argsz) {
                    if (want > 1 << 20) {
                        throw new VfioException(what + " asks for an implausible " + want + "-byte buffer");
                    }
                    argsz = want; // capabilities did not fit: ask again with the size the kernel named
                    continue;
                }
                return answer.read(info);
            }
        }
        throw new VfioException(what + ": the capability buffer size kept changing");
    }

    /**
     * @param info      the whole info buffer as filled by the kernel (its argsz bytes)
     * @param first     the struct's {@code cap_offset} (0: no capabilities)
     * @param fixedSize size of the struct's fixed part: no capability may start inside it
     */
    static List<Cap> walk(MemorySegment info, long first, long fixedSize, String what) throws VfioException {
        List<Cap> caps = new ArrayList<>();
        long off = first;
        while (off != 0) {
            if (caps.size() == MAX_CAPS) {
                throw new VfioException(what + ": capability chain longer than " + MAX_CAPS + " entries (a loop?)");
            }
            if (off < fixedSize || off % 4 != 0 || off + HEADER_SIZE > info.byteSize()) {
                throw new VfioException(what + ": capability header at offset " + off + " outside the "
                        + info.byteSize() + "-byte info buffer (fixed part " + fixedSize + " bytes)");
            }
            int id = Short.toUnsignedInt(info.get(JAVA_SHORT, off + VfioAbi.CAP_ID));
            int version = Short.toUnsignedInt(info.get(JAVA_SHORT, off + VfioAbi.CAP_VERSION));
            caps.add(new Cap(id, version, off, info.asSlice(off)));
            off = Integer.toUnsignedLong(info.get(JAVA_INT, off + VfioAbi.CAP_NEXT));
        }
        return caps;
    }

    /** Throws unless {@code cap} holds at least {@code size} bytes. */
    static void require(Cap cap, long size, String what) throws VfioException {
        if (cap.data().byteSize() < size) {
            throw new VfioException(what + ": capability " + cap.id() + " needs " + size + " bytes, the buffer has "
                    + cap.data().byteSize() + " after offset " + cap.offset());
        }
    }
}
