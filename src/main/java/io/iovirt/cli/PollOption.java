// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

/**
 * A {@code poll-us} value as {@code serve blk --poll-us} and {@code serve net --port ...,poll-us=} take it:
 * {@code adaptive} (poll as long as it has been paying off, up to
 * {@link io.iovirt.virtio.QueueWorker#DEFAULT_ADAPTIVE_SPIN_NANOS}), {@code adaptive:US} (the
 * same up to US), {@code US} (always US), {@code 0} (sleep at once).
 *
 * @param micros   the bound (adaptive) or the fixed time
 * @param adaptive whether the time adapts ({@link io.iovirt.virtio.QueueWorker.Builder#adaptiveSpin})
 */
record PollOption(int micros, boolean adaptive) {
    /** Largest value accepted, in µs (one second, the queue worker's own bound). */
    static final int MAX_MICROS = 1_000_000;

    /** The default of both commands. */
    static final PollOption DEFAULT =
            new PollOption((int) (io.iovirt.virtio.QueueWorker.DEFAULT_ADAPTIVE_SPIN_NANOS / 1000), true);

    /** What the options' help says. */
    static final String SYNTAX = "adaptive, adaptive:US, US or 0";

    /**
     * @throws IllegalArgumentException with a message that names the syntax when {@code value} is none of the forms
     */
    static PollOption parse(String value) {
        if (value.equals("adaptive")) {
            return DEFAULT;
        }
        boolean adaptive = value.startsWith("adaptive:");
        String number = adaptive ? value.substring("adaptive:".length()) : value;
        int us;
        try {
            us = Integer.parseInt(number);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException("poll-us '" + value + "' is not " + SYNTAX);
        }
        if (us < 0 || us > MAX_MICROS) {
            throw new IllegalArgumentException("poll-us must be 0.." + MAX_MICROS + " µs: " + value);
        }
        return new PollOption(us, adaptive && us > 0);
    }
}
