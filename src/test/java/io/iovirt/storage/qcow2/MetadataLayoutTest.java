// SPDX-License-Identifier: Apache-2.0
package io.iovirt.storage.qcow2;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;

import org.junit.jupiter.api.Test;

/** The sorted index of metadata clusters the allocator and the data path check against. */
class MetadataLayoutTest {
    /** A range added in one pass is what adding its clusters one by one gives: sorted, each cluster once. */
    @Test
    void aRangeAddedAtOnceIsWhatAddingItsClustersOneByOneGives() {
        long[] index = {0, 3, 7, 8, 20};
        long[][] ranges = {{10, 5}, {5, 4}, {0, 2}, {21, 3}, {19, 3}, {1, 0}, {4, 30}};
        for (long[] r : ranges) {
            long[] oneByOne = index;
            for (long c = r[0]; c < r[0] + r[1]; c++) {
                oneByOne = MetadataLayout.with(oneByOne, c);
            }
            assertArrayEquals(oneByOne, MetadataLayout.withRange(index, r[0], r[1]), r[0] + "+" + r[1]);
        }
        assertArrayEquals(new long[] {4, 5}, MetadataLayout.withRange(new long[0], 4, 2));
    }
}
