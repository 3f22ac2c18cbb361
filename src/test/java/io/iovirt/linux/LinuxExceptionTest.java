// SPDX-License-Identifier: Apache-2.0
package io.iovirt.linux;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import org.junit.jupiter.api.Test;

class LinuxExceptionTest {
    @Test
    void errnoNamesAndDescriptionsComeFromTheCLibrary() {
        assertEquals("EINVAL", Errno.name(Errno.EINVAL));
        assertEquals("EAGAIN", Errno.name(Errno.EAGAIN));
        assertEquals("ECONNRESET", Errno.name(Errno.ECONNRESET));
        assertEquals("Bad file descriptor", Errno.describe(Errno.EBADF));
        assertEquals("errno 9999", Errno.name(9999));
    }

    @Test
    void messageNamesCallObjectAndErrno() {
        LinuxException e = new LinuxException("recvmsg", "vhost.sock", Errno.ECONNRESET);
        assertEquals("recvmsg(vhost.sock) failed: ECONNRESET (Connection reset by peer)", e.getMessage());
        assertEquals("recvmsg", e.call());
        assertEquals("ECONNRESET", e.errnoName());
    }

    @Test
    void aRealFailureOnAClosedDescriptorIsEbadf() throws Exception {
        try (EventFd e = EventFd.create(true)) {
            Fd dup = e.fd().dup();
            assertTrue(dup.get() != e.fd().get());
            dup.close();
            assertFalse(dup.isOpen());
            assertThrows(IllegalStateException.class, dup::get);
        }
        int raw = Integer.MAX_VALUE - 7; // above any descriptor limit: certainly not open
        Fd bogus = Fd.adopt(raw);
        LinuxException ex = assertThrows(LinuxException.class, bogus::isNonBlocking);
        assertEquals(Errno.EBADF, ex.errno());
        assertEquals("fcntl(F_GETFL, fd " + raw + ") failed: EBADF (Bad file descriptor)", ex.getMessage());
        assertEquals(raw, bogus.release());
    }
}
