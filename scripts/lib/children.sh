# SPDX-License-Identifier: Apache-2.0
# Sourced by the benchmark scripts: the processes a script starts in the background go into PIDS; cleanup stops them
# (SIGTERM to each, then waits for each, so a backend's own shutdown completes) and empties PIDS. It runs on exit and
# between runs; a script with more to tear down defines its own cleanup that calls stop_children.
PIDS=()
stop_children() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() { stop_children; }
trap cleanup EXIT
