// SPDX-License-Identifier: Apache-2.0
/**
 * The project's only native code path: Linux system calls through the FFM Linker (no JNI, no C). Every other
 * package uses these typed wrappers; failures are {@link io.iovirt.linux.LinuxException}s that name the call and
 * the errno. Descriptors are owned through {@link io.iovirt.linux.Fd}.
 */
package io.iovirt.linux;
