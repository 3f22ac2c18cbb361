#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Heap bytes the `iovirt serve blk` backend allocates per request, end to end: the backend runs under a JFR recording
# of jdk.ThreadAllocationStatistics only (every thread's allocated-bytes counter, sampled each second), `iovirt bench
# blk` drives it, and the bytes the backend's threads allocated during the measured phase are divided by the
# requests completed in it (IOPS x the sampled interval). Allocation counts do not depend on timing, so this is valid
# on a loaded machine. Issue 10; the unit-level figure per request is BlkAllocationTest.
#
# Usage: scripts/bench-alloc.sh [--seconds N] [--warmup N] [--prewarm N] [--qd N] [--size MiB]
#                               [--modes "buffered direct"] [--rws "randread randwrite"] [--dir DIR]
# --prewarm: seconds of the same load run against the backend before the measured run (the backends run C2 only, so
# a path is interpreted until it has run ~10000 times: slow O_DIRECT cases at QD 1 need that long to be measured
# compiled — the steady state; what is allocated before is the JIT's warm-up, not per-request cost).
# Output: a Markdown table on stdout; logs, recordings and bench JSON under DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_PER_RUN=10
WARMUP=3
PREWARM=20
QD=32
SIZE_MIB=256
MODES="buffered direct"
RWS="randread randwrite"
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --prewarm) PREWARM="$2"; shift 2 ;;
    --qd) QD="$2"; shift 2 ;;
    --size) SIZE_MIB="$2"; shift 2 ;;
    --modes) MODES="$2"; shift 2 ;;
    --rws) RWS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    *) echo "bench-alloc: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
export JAVA_HOME="${JAVA_HOME:-/usr/lib/jvm/temurin-25-jdk-amd64}"
[ -x "$JAVA_HOME/bin/jfr" ] || { echo "bench-alloc: $JAVA_HOME/bin/jfr missing: set JAVA_HOME to a JDK 25" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench-alloc: needs python3 (apt-get install python3)" >&2; exit 1; }
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/bench-alloc.XXXXXX)"
mkdir -p "$DIR"
IMAGE="$DIR/disk.raw"
[ -f "$IMAGE" ] || { truncate -s "${SIZE_MIB}M" "$IMAGE"; dd if=/dev/urandom of="$IMAGE" bs=1M count="$SIZE_MIB" \
  conv=notrunc status=none; }
PID=""
cleanup() { [ -z "$PID" ] || { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; }; }
trap cleanup EXIT

echo "| mode | rw | QD | IOPS | backend queue thread bytes/request | whole backend bytes/request (JFR's threads excluded) |"
echo "|---|---|---:|---:|---:|---:|"
for mode in $MODES; do
  for rw in $RWS; do
    tag="$mode-$rw-qd$QD"
    flag=""; [ "$mode" = direct ] && flag="--direct"
    rm -f "$DIR/blk.sock" "$DIR/$tag.jfr"
    IOVIRT_JAVA_OPTS="-XX:StartFlightRecording=filename=$DIR/$tag.jfr,settings=none,+jdk.ThreadAllocationStatistics#enabled=true,+jdk.ThreadAllocationStatistics#period=1s" \
      "$ROOT/iovirt" serve blk --image "$IMAGE" --socket "$DIR/blk.sock" --queues 1 $flag > "$DIR/$tag-serve.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do [ -S "$DIR/blk.sock" ] && break; sleep 0.1; done
    [ -S "$DIR/blk.sock" ] || { echo "bench-alloc: serve blk did not listen; see $DIR/$tag-serve.log" >&2; exit 1; }
    [ "$PREWARM" = 0 ] || "$ROOT/iovirt" bench blk --socket "$DIR/blk.sock" --rw "$rw" --bs 4096 --qd "$QD" \
      --seconds "$PREWARM" --warmup 1 --queues 1 --json > "$DIR/$tag-prewarm.json"
    start=$(date +%s.%N)
    "$ROOT/iovirt" bench blk --socket "$DIR/blk.sock" --rw "$rw" --bs 4096 --qd "$QD" --seconds "$SECONDS_PER_RUN" \
      --warmup "$WARMUP" --queues 1 --json > "$DIR/$tag.json"
    end=$(date +%s.%N)
    cleanup
    "$JAVA_HOME/bin/jfr" print --json --events jdk.ThreadAllocationStatistics "$DIR/$tag.jfr" > "$DIR/$tag-alloc.json"
    python3 - "$DIR/$tag-alloc.json" "$DIR/$tag.json" "$start" "$end" "$WARMUP" "$mode" "$rw" "$QD" <<'EOF'
import json, sys, datetime, collections
alloc, bench, start, end, warmup = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
mode, rw, qd = sys.argv[6:9]
iops = json.load(open(bench))["iops"]
# The measured phase: after the client's start-up and warm-up, before it stops (a second of margin each side).
lo, hi = start + warmup + 2.0, end - 1.0
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
series = collections.defaultdict(list)
for e in json.load(open(alloc))["recording"]["events"]:
    v = e["values"]
    t = ts(v["startTime"])
    name = (v.get("thread") or {}).get("javaName") or "?"
    if lo <= t <= hi:
        series[name].append((t, v["allocated"]))
def delta(points):
    points.sort()
    return (points[-1][1] - points[0][1], points[-1][0] - points[0][0]) if len(points) >= 2 else (0, 0)
queue = {n: p for n, p in series.items() if n.startswith("iovirt blk ") and " q" in n}  # "iovirt blk SOCKET qN"
if not queue:
    sys.exit("bench-alloc: no queue thread among " + ", ".join(sorted(series)))
qb, qt = max((delta(p) for p in queue.values()), key=lambda d: d[1])
tb, tt = 0, 0
for n, p in series.items():
    if n.startswith("JFR") or "Flight" in n:
        continue
    b, t = delta(p)
    tb += b
    tt = max(tt, t)
reqs = iops * qt
print(f"| {mode} | {rw} | {qd} | {iops:.0f} | {qb / reqs:.2f} | {tb / (iops * tt):.2f} |" if reqs > 0 else
      f"| {mode} | {rw} | {qd} | {iops:.0f} | n/a (window too short) | n/a |")
EOF
  done
done
echo "bench-alloc: recordings and JSON in $DIR" >&2
