// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import io.iovirt.storage.DiskImage;
import io.iovirt.storage.Images;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.List;
import java.util.Random;
import net.jqwik.api.Arbitraries;
import net.jqwik.api.Arbitrary;
import net.jqwik.api.Combinators;
import net.jqwik.api.ForAll;
import net.jqwik.api.Property;
import net.jqwik.api.Provide;

/**
 * iovirt's qcow2 against a raw model (a byte array): random sequences of writes, write-zeroes, flushes and
 * re-opens, over a backing file, with small clusters so one sequence allocates L2 tables, crosses cluster
 * boundaries and evicts from a tiny metadata cache. After each sequence the image must read exactly like the model
 * through iovirt, through {@code qemu-img compare}, and pass {@code qemu-img check}.
 */
@net.jqwik.api.Tag("peer") // qemu-img create/check/compare: Failsafe
class Qcow2ModelPropertiesTest {
    static final int SIZE = 4 << 20;

    sealed interface Op permits Write, Zero, Flush, Reopen {}

    record Write(long offset, int length, long seed) implements Op {}

    record Zero(long offset, int length, boolean unmap) implements Op {}

    record Flush() implements Op {}

    record Reopen() implements Op {}

    @Provide
    Arbitrary<List<Op>> ops() {
        Arbitrary<Long> off = Arbitraries.longs().between(0, SIZE / 512 - 1).map(s -> s * 512);
        Arbitrary<Integer> len = Arbitraries.integers().between(1, 160).map(n -> n * 512);
        Arbitrary<Op> write = Combinators.combine(off, len, Arbitraries.longs()).as(Write::new);
        Arbitrary<Op> zero = Combinators.combine(off, len.map(n -> n * 4), Arbitraries.of(true, false))
                .as(Zero::new);
        Arbitrary<Op> op = Arbitraries.frequencyOf(
                net.jqwik.api.Tuple.of(8, write), net.jqwik.api.Tuple.of(3, zero),
                net.jqwik.api.Tuple.of(1, Arbitraries.just(new Flush())),
                        net.jqwik.api.Tuple.of(1, Arbitraries.just(new Reopen())));
        return op.list().ofMinSize(1).ofMaxSize(40);
    }

    @Property(tries = 25)
    void qcow2ReadsLikeARawModel(@ForAll("ops") List<Op> ops, @ForAll("clusterBits") int clusterBits) throws Exception {
        Path dir = Files.createTempDirectory("qcow2-prop");
        try {
            byte[] model = new byte[SIZE];
            new Random(99).nextBytes(model);
            Arrays.fill(model, SIZE / 2, SIZE, (byte) 0); // the backing file covers half the disk
            Path base = dir.resolve("base.raw");
            Files.write(base, Arrays.copyOf(model, SIZE / 2));
            Path img = QemuTools.createQcow2(
                    dir,
                    "p.qcow2",
                    Integer.toString(SIZE),
                    "cluster_size=" + (1 << clusterBits),
                    "backing_file=base.raw",
                    "backing_fmt=raw");
            DiskImage q = Qcow2Image.open(img, false, 4L << clusterBits);
            try {
                for (Op op : ops) {
                    switch (op) {
                        case Write w -> {
                            int n = (int) Math.min(w.length(), SIZE - w.offset());
                            byte[] d = new byte[n];
                            new Random(w.seed()).nextBytes(d);
                            Qcow2ImageTest.write(q, w.offset(), d);
                            System.arraycopy(d, 0, model, (int) w.offset(), n);
                        }
                        case Zero z -> {
                            int n = (int) Math.min(z.length(), SIZE - z.offset());
                            q.writeZeroes(z.offset(), n, z.unmap());
                            Arrays.fill(model, (int) z.offset(), (int) z.offset() + n, (byte) 0);
                        }
                        case Flush f -> q.flush();
                        case Reopen r -> {
                            q.close();
                            q = Images.open(img, null, false, false);
                        }
                    }
                }
                assertArrayEquals(model, Qcow2ImageTest.read(q, 0, SIZE));
            } finally {
                q.close();
            }
            QemuTools.check(img, false);
            Path want = dir.resolve("model.raw");
            Files.write(want, model);
            QemuTools.ok("qemu-img", "compare", "-f", "qcow2", "-F", "raw", img.toString(), want.toString());
        } finally {
            try (var s = Files.walk(dir)) {
                s.sorted(java.util.Comparator.reverseOrder())
                        .forEach(p -> p.toFile().delete());
            }
        }
    }

    @Provide
    Arbitrary<Integer> clusterBits() {
        return Arbitraries.of(9, 12, 16);
    }
}
