// SPDX-License-Identifier: Apache-2.0
package io.iovirt.virtio;

/**
 * The virtio device status byte (VIRTIO 1.2 §2.1): the driver sets ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK
 * in that order; the device raises DEVICE_NEEDS_RESET when it can no longer serve (a queue failed, the image went
 * away); a write of 0 resets the device.
 */
public final class DeviceStatus {
    public static final int ACKNOWLEDGE = 1;
    public static final int DRIVER = 2;
    public static final int DRIVER_OK = 4;
    public static final int FEATURES_OK = 8;
    public static final int DEVICE_NEEDS_RESET = 0x40;
    public static final int FAILED = 0x80;
    /** The status is one byte: a value above this is not a status. */
    public static final int MAX = 0xff;
    /** Writing this status resets the device. */
    public static final int RESET = 0;

    private DeviceStatus() {}

    /** True when {@code value} (unsigned, as a transport carries it) fits the status byte. */
    public static boolean valid(long value) {
        return value >= 0 && value <= MAX;
    }
}
