// SPDX-License-Identifier: Apache-2.0
package io.iovirt.cli;

import io.iovirt.bench.CoreToCore;
import io.iovirt.linux.LinuxException;
import io.iovirt.util.Json;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.Callable;
import picocli.CommandLine;
import picocli.CommandLine.Command;
import picocli.CommandLine.Option;

/** {@code iovirt bench c2c}: the cache-line round trip between two CPUs (see {@link CoreToCore}). */
@Command(
        name = "c2c",
        footerHeading = "%nExamples:%n",
        footer = {"  iovirt bench c2c", "  iovirt bench c2c --cpus 0,3 --samples 50 --json"},
        mixinStandardHelpOptions = true,
        sortOptions = false,
        description = {
            "Measure how long one cache line takes from one CPU to another and back (two pinned threads passing a "
                    + "counter): the floor under every polled vring access the other side just wrote.",
            "On a virtual machine the host decides where its vCPUs run; record this beside a benchmark run to tell "
                    + "a slow placement from a slow backend."
        })
public final class C2cBenchCommand implements Callable<Integer> {
    @CommandLine.Spec
    CommandLine.Model.CommandSpec spec;

    @Option(
            names = "--cpus",
            defaultValue = "0,1",
            split = ",",
            paramLabel = "A,B",
            description = "The two CPUs: the measuring thread's and the answering thread's (default ${DEFAULT-VALUE}).")
    List<Integer> cpus;

    @Option(
            names = "--samples",
            defaultValue = "20",
            paramLabel = "N",
            description = "Samples, each the mean of --round-trips round trips (default ${DEFAULT-VALUE}).")
    int samples;

    @Option(
            names = "--round-trips",
            defaultValue = "10000",
            paramLabel = "N",
            description = "Round trips per sample (default ${DEFAULT-VALUE}).")
    int roundTrips;

    @Option(names = "--json", description = "Print the result as JSON.")
    boolean json;

    @Override
    public Integer call() throws Exception {
        if (cpus.size() != 2) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(), "--cpus takes two CPU numbers, e.g. 0,1; got " + cpus.size());
        }
        CoreToCore.Result r;
        try {
            r = CoreToCore.measure(cpus.get(0), cpus.get(1), samples, roundTrips);
        } catch (IllegalArgumentException e) {
            throw new CommandLine.ParameterException(spec.commandLine(), e.getMessage());
        } catch (LinuxException e) {
            throw new CommandLine.ParameterException(
                    spec.commandLine(),
                    "cannot pin a thread: " + e.getMessage() + " (online CPUs: " + onlineCpus()
                            + "; a cpuset or taskset may allow fewer)");
        }
        spec.commandLine().getOut().print(json ? Json.write(r.json()) + "\n" : r.text());
        spec.commandLine().getOut().flush();
        return 0;
    }

    private static String onlineCpus() {
        try {
            return Files.readString(Path.of("/sys/devices/system/cpu/online")).trim();
        } catch (IOException e) {
            return "unknown";
        }
    }
}
