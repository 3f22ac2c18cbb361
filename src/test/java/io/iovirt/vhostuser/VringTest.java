// SPDX-License-Identifier: Apache-2.0
package io.iovirt.vhostuser;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.iovirt.linux.EventFd;
import io.iovirt.virtio.VirtioRing;
import java.lang.foreign.Arena;
import java.lang.foreign.MemorySegment;
import java.util.List;
import org.junit.jupiter.api.Test;

/** The per-ring state machine on its own: a real memfd as guest memory, {@link RecordingBackend} as the device. */
class VringTest {
    private static final long GPA = 0x100000;
    private static final Vring.Layout SPLIT = new Vring.Layout(false, false, 256);

    @Test
    void onlyTheDrawnTransitionsExist() {
        for (Vring.State from : Vring.State.values()) {
            for (Vring.State to : Vring.State.values()) {
                boolean drawn = switch (from) {
                    case STOPPED -> to == Vring.State.STARTED;
                    case STARTED -> to == Vring.State.RUNNING || to == Vring.State.STOPPED;
                    case RUNNING -> to == Vring.State.STARTED;
                };
                assertEquals(drawn, from.canMoveTo(to), from + " -> " + to);
            }
        }
    }

    @Test
    void aRingRunsOnlyOnceStartedEnabledAndDescribedAndIsLaidOutOnlyWhileStopped() throws Exception {
        RecordingBackend device = new RecordingBackend(1);
        try (FrontendMemory ram = FrontendMemory.allocate(GPA, 1 << 20);
                MemoryTable memory = new MemoryTable("t", new PeerFile.Quota(), m -> {});
                Vring v = new Vring(0, "t", device)) {
            memory.set(memTable(ram));
            assertEquals(Vring.State.STOPPED, v.state());
            v.setKick(EventFd.create(true));
            assertEquals(Vring.State.STARTED, v.state());
            ProtocolException e = assertThrows(ProtocolException.class, () -> v.setNum(64, SPLIT));
            assertTrue(e.getMessage().contains("SET_VRING_NUM for queue 0 while it is started"), e.getMessage());
            assertThrows(ProtocolException.class, () -> v.setBase(0, SPLIT));
            assertFalse(v.ready(true), "not enabled");
            assertTrue(v.ready(false), "without protocol features a started ring is enabled");
            e = assertThrows(ProtocolException.class, () -> v.start(SPLIT, memory, 0, null));
            assertTrue(e.getMessage().contains("started without SET_VRING_NUM"), e.getMessage());

            v.stop(); // GET_VRING_BASE
            assertEquals(Vring.State.STOPPED, v.state());
            v.setNum(64, SPLIT);
            v.setBase(5, SPLIT);
            v.setAddr(vringAddr(ram, GPA, GPA + VirtioRing.descAreaBytes(64), GPA + 0x1000), memory, SPLIT);
            v.setKick(null);
            v.setEnabled(true);
            assertTrue(v.ready(true));
            VringSetup setup = v.start(SPLIT, memory, 0, null);
            assertEquals(Vring.State.RUNNING, v.state());
            assertEquals(GPA + 0x1000, setup.usedGpa());
            assertEquals(5, setup.base());
            assertTrue(device.running.containsKey(0));
            assertThrows(
                    ProtocolException.class,
                    () -> v.setAddr(vringAddr(ram, GPA, GPA + 0x2000, GPA + 0x3000), memory, SPLIT));
            IllegalStateException bug = assertThrows(IllegalStateException.class, v::stop);
            assertTrue(bug.getMessage().contains("still runs it"), bug.getMessage());

            assertTrue(v.stopDevice());
            assertFalse(v.stopDevice(), "already stopped");
            assertEquals(Vring.State.STARTED, v.state());
            v.stop();
            assertEquals(Vring.State.STOPPED, v.state());
        }
    }

    @Test
    void ringAreasAreSizedByTheNegotiatedLayout() throws Exception {
        // A split ring without EVENT_IDX whose used ring ends exactly at the end of guest memory: the protocol layer
        // accepts it as the queue does (both size it with VirtioRing).
        try (FrontendMemory ram = FrontendMemory.allocate(GPA, 0x2000);
                MemoryTable memory = new MemoryTable("t", new PeerFile.Quota(), m -> {});
                Vring v = new Vring(0, "t", new RecordingBackend(1))) {
            memory.set(memTable(ram));
            v.setNum(64, SPLIT);
            long used = GPA + 0x2000 - VirtioRing.splitUsedBytes(64, false);
            v.setAddr(vringAddr(ram, GPA, GPA + 0x400, used), memory, SPLIT);
            v.setKick(null);
            v.setEnabled(true);
            assertEquals(used, v.start(SPLIT, memory, 0, null).usedGpa());
            v.stopDevice();
            v.stop();
            Vring.Layout withEventIdx = new Vring.Layout(false, true, 256);
            ProtocolException e = assertThrows(
                    ProtocolException.class,
                    () -> v.setAddr(vringAddr(ram, GPA, GPA + 0x400, used), memory, withEventIdx));
            assertTrue(e.getMessage().contains("outside guest memory"), e.getMessage());
        }
    }

    private static Message memTable(FrontendMemory ram) throws Exception {
        MemorySegment p = Arena.ofAuto().allocate(Payloads.MemoryTable.sizeFor(1));
        Payloads.MemoryTable.writeCount(p, 1);
        Payloads.Region.write(Payloads.MemoryTable.region(p, 0), ram.guestPhysAddr(), ram.size(), ram.userAddr(), 0);
        return new Message(MessageType.SET_MEM_TABLE, 0, p, List.of(ram.fd().dup()));
    }

    private static MemorySegment vringAddr(FrontendMemory ram, long desc, long avail, long used) {
        MemorySegment p = Arena.ofAuto().allocate(Payloads.VRING_ADDR_SIZE);
        Payloads.VringAddr.write(p, 0, 0, ram.userAddrOf(desc), ram.userAddrOf(used), ram.userAddrOf(avail), 0);
        return p;
    }
}
