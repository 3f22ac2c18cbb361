package io.iovirt.host;

/**
 * The host is not set up for what was asked, or refused an operation: carries what failed and the remedy a person
 * can act on. The CLI prints {@link #getMessage()} as one line (problem -- remedy, in ASCII so any locale shows it),
 * never a stack trace.
 */
public class HostConfigException extends RuntimeException {
    private final String problem;
    private final String remedy;

    public HostConfigException(String problem, String remedy) {
        this(problem, remedy, null);
    }

    public HostConfigException(String problem, String remedy, Throwable cause) {
        super(remedy == null || remedy.isEmpty() ? problem : problem + " -- " + remedy, cause);
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
