// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * Everything a device needs to attach to one virtqueue the driver set up. Addresses are guest physical; the
 * vhost-user layer converts the frontend's virtual addresses first (its {@code MemoryTable}).
 * The values are not trusted: {@link Virtqueue#create} checks them and throws {@link VirtqueueException}.
 *
 * @param index          queue index, used in error messages
 * @param size           queue size (split: power of two; both: 1..32768)
 * @param packed         VIRTIO_F_RING_PACKED negotiated
 * @param descAddr       descriptor table (split) / descriptor ring (packed)
 * @param driverArea     available ring (split) / driver event suppression (packed)
 * @param deviceArea     used ring (split) / device event suppression (packed)
 * @param eventIdx       VIRTIO_F_EVENT_IDX (VIRTIO_RING_F_EVENT_IDX) negotiated
 * @param indirectDesc   VIRTIO_F_INDIRECT_DESC negotiated
 * @param availIndex     split: next available ring index to consume (16 bits); packed: next descriptor ring position
 * @param availWrap      packed: device's view of the driver ring wrap counter at {@code availIndex} (starts true)
 * @param usedIndex      packed: next position the device writes a used descriptor at; split: ignored, the used
 *                       index is read from the used ring (the driver zeroes it; after a reconnect it holds what the
 *                       previous backend published), as the Linux vhost and libvhost-user do
 * @param usedWrap       packed: device ring wrap counter at {@code usedIndex} (starts true)
 * @param inOrder        VIRTIO_F_IN_ORDER negotiated: the device returns buffers in the order they were made
 *                       available, and a split queue may then cover several returned chains with one used entry
 *                       (see {@link Virtqueue#pushBatched(DescriptorChain[], long[], int)}); false from the factories,
 *                       set with {@link #withInOrder}
 */
public record QueueConfig(
        int index,
        int size,
        boolean packed,
        long descAddr,
        long driverArea,
        long deviceArea,
        boolean eventIdx,
        boolean indirectDesc,
        int availIndex,
        boolean availWrap,
        int usedIndex,
        boolean usedWrap,
        boolean inOrder) {

    /** A split queue starting at available index {@code availIndex}. */
    public static QueueConfig split(
            int index,
            int size,
            long desc,
            long avail,
            long used,
            boolean eventIdx,
            boolean indirectDesc,
            int availIndex) {
        return new QueueConfig(
                index, size, false, desc, avail, used, eventIdx, indirectDesc, availIndex, true, 0, true, false);
    }

    /** A packed queue starting at the given positions and wrap counters (a fresh ring: 0, true, 0, true). */
    public static QueueConfig packed(
            int index,
            int size,
            long desc,
            long driverArea,
            long deviceArea,
            boolean eventIdx,
            boolean indirectDesc,
            int availIndex,
            boolean availWrap,
            int usedIndex,
            boolean usedWrap) {
        return new QueueConfig(
                index,
                size,
                true,
                desc,
                driverArea,
                deviceArea,
                eventIdx,
                indirectDesc,
                availIndex,
                availWrap,
                usedIndex,
                usedWrap,
                false);
    }

    /**
     * This configuration with the starting state from a VHOST_USER_SET_VRING_BASE value, encoded as QEMU does: split
     * rings carry the last available index in the low 16 bits; packed rings carry the available position in bits
     * 0-14 and its wrap counter in bit 15, and the used position and wrap counter the same way in bits 16-31 (QEMU
     * always sends both halves; so does the vhost-user spec, and Linux's vhost takes them as they are).
     *
     * <p>A zero upper half is used position 0 with wrap counter 0: where the used side is after an odd number of laps,
     * with the requests in flight at the stop between it and the available side. It is taken as that, except when
     * the available wrap counter is set: then it would put more than a ring's worth in flight (available position
     * {@code a > 0}: impossible) or exactly a ring (a = 0), and it is what frontends that send only the available half
     * send (DPDK's virtio-user starts every packed ring with 0x8000): the used side starts where the available side
     * is. Reading every zero upper half that way instead made the used side jump over the requests in flight, whose
     * completions then went to the wrong ring slots with the wrong wrap counter.
     */
    public QueueConfig withVringBase(int num) {
        if (!packed) {
            return withState(num & 0xffff, true, 0, true, inOrder);
        }
        int avail = num & 0x7fff;
        boolean aWrap = (num & 0x8000) != 0;
        int usedHalf = num >>> 16;
        boolean availOnly = usedHalf == 0 && aWrap;
        int used = availOnly ? avail : usedHalf & 0x7fff;
        boolean uWrap = availOnly || (usedHalf & 0x8000) != 0;
        return withState(avail, aWrap, used, uWrap, inOrder);
    }

    /** This configuration with VIRTIO_F_IN_ORDER negotiated ({@code true}) or not. */
    public QueueConfig withInOrder(boolean inOrder) {
        return withState(availIndex, availWrap, usedIndex, usedWrap, inOrder);
    }

    /** The same ring with other starting positions and in-order setting. */
    private QueueConfig withState(int availIndex, boolean availWrap, int usedIndex, boolean usedWrap, boolean inOrder) {
        return new QueueConfig(
                index,
                size,
                packed,
                descAddr,
                driverArea,
                deviceArea,
                eventIdx,
                indirectDesc,
                availIndex,
                availWrap,
                usedIndex,
                usedWrap,
                inOrder);
    }
}
