// SPDX-License-Identifier: Apache-2.0
package io.iovirt.util;

/**
 * An error a person can act on: what failed and why ({@link #problem()}), and what to do about it
 * ({@link #remedy()}). The message is {@code problem — remedy}, the shape the CLI contract (docs/cli.md) prints after
 * {@code iovirt <command>: }, as one line and without a stack trace.
 */
public class ActionableException extends RuntimeException {
    /** The separator between what failed and what to do, in every error message iovirt prints. */
    public static final String REMEDY_SEPARATOR = " — ";

    private final String problem;
    private final String remedy;

    public ActionableException(String problem, String remedy) {
        this(problem, remedy, null);
    }

    public ActionableException(String problem, String remedy, Throwable cause) {
        super(remedy == null || remedy.isEmpty() ? problem : problem + REMEDY_SEPARATOR + remedy, cause);
        this.problem = problem;
        this.remedy = remedy == null ? "" : remedy;
    }

    /** What failed and why. */
    public String problem() {
        return problem;
    }

    /** What to do about it (may be empty). */
    public String remedy() {
        return remedy;
    }
}
