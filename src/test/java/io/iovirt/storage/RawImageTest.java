package io.iovirt.storage;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.LinuxException;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.ValueLayout;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.ValueSource;

class RawImageTest {
    @TempDir
    Path dir;

    private Path image(long size) throws IOException {
        Path p = dir.resolve("disk.raw");
        try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
            f.setLength(size);
        }
        return p;
    }

    @ParameterizedTest
    @ValueSource(booleans = {false, true})
    void scatterGatherRoundTripIncludingUnalignedBuffersInDirectMode(boolean direct) throws Exception {
        Path p = image(1 << 20);
        byte[] data = new byte[8192];
        new Random(7).nextBytes(data);
        try (RawImage img = RawImage.open(p, false, direct); Arena arena = Arena.ofConfined();
             RawImage.IoContext io = img.newContext(16, 64 * 1024)) {
            // Three buffers, the middle one deliberately misaligned (a guest may do that) - forces the bounce path.
            MemorySegment whole = arena.allocate(8192 + 4096 + 1, 4096);
            MemorySegment a = whole.asSlice(0, 4096);
            MemorySegment b = whole.asSlice(4096 + 1, 4096);
            MemorySegment.copy(data, 0, a, ValueLayout.JAVA_BYTE, 0, 4096);
            MemorySegment.copy(data, 4096, b, ValueLayout.JAVA_BYTE, 0, 4096);
            io.clear();
            io.add(a);
            io.add(b);
            io.write(65536);
            img.flush();
            assertArrayEquals(data, java.util.Arrays.copyOfRange(Files.readAllBytes(p), 65536, 65536 + 8192));

            MemorySegment back = arena.allocate(8192, 4096);
            io.clear();
            io.add(back.asSlice(0, 512));
            io.add(back.asSlice(512));
            io.read(65536);
            assertArrayEquals(data, back.toArray(ValueLayout.JAVA_BYTE));
        }
    }

    @Test
    void outOfRangeAndReadOnlyWritesAreRefused() throws Exception {
        Path p = image(4096);
        try (RawImage img = RawImage.open(p, true, false); Arena arena = Arena.ofConfined();
             RawImage.IoContext io = img.newContext(4, 0)) {
            io.clear();
            io.add(arena.allocate(512));
            assertThrows(LinuxException.class, () -> io.read(4096));
            assertThrows(LinuxException.class, () -> io.read(Long.MAX_VALUE - 100));
            assertThrows(LinuxException.class, () -> io.write(0));
            assertThrows(LinuxException.class, () -> img.discard(0, 512));
        }
    }

    @Test
    void discardAndWriteZeroesReadBackAsZeros() throws Exception {
        Path p = image(1 << 20);
        byte[] ones = new byte[1 << 20];
        java.util.Arrays.fill(ones, (byte) 1);
        Files.write(p, ones);
        try (RawImage img = RawImage.open(p, false, false)) {
            img.discard(0, 65536);
            img.writeZeroes(65536, 4096, false);
            img.flush();
        }
        byte[] after = Files.readAllBytes(p);
        for (int i = 0; i < 65536 + 4096; i++) {
            assertEquals(0, after[i], "byte " + i);
        }
        assertEquals(1, after[65536 + 4096]);
    }

    @Test
    void missingImageSaysHowToCreateIt() {
        IOException e = assertThrows(IOException.class, () -> RawImage.open(dir.resolve("nope.raw"), false, false));
        assertTrue(e.getMessage().contains("truncate -s"), e.getMessage());
    }
}
