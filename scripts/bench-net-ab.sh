#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Interleaved A/B of iovirt builds on the vhost-user-net benchmark: each round runs scripts/bench-net.sh once from
# each checkout in turn (one round, one poll-us, the given sizes), so that a slow phase of the host — on a VM the
# two vCPUs' placement moves the cross-core cache-line cost, and with it every backend's rate — falls on every build
# alike instead of on whichever ran last. Each invocation measures DPDK's vhost PMD too, the reference for that
# moment. One line per backend run, in run order; the runs' logs stay in DIR/BUILD-ROUND.
#
#   scripts/bench-net-ab.sh [--rounds N] [--topology rxonly|p2p] [--sizes "64 1500"] [--poll-us P]
#                           [--seconds S] [--warmup S] [--dir DIR] CHECKOUT...
#
# CHECKOUT: a checkout of iovirt (a directory with ./iovirt and scripts/bench-net.sh, e.g. a git worktree of the
# change and one of main; each builds its own target/iovirt.jar). Each checkout's own bench-net.sh runs, so a
# checkout is measured with the benchmark it shipped with; its charts go to the run's directory, not to docs/.
# Output per run: checkout, round, then bench-net.sh's runs.txt line: backend frame-bytes poll-us 1 Mpps
# backend-CPU-ns/frame backend-core-% frontend-core-% [drops].
# Used for the net per-frame changes of 2026-12-04 (docs/benchmarks.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ROUNDS=3 TOPOLOGY=rxonly SIZES=64 POLL=0 SECS=8 WARMUP=8 DIR=""
CHECKOUTS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --topology) TOPOLOGY="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --poll-us) POLL="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) sed -n '3,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench-net-ab: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) CHECKOUTS+=("$1"); shift ;;
  esac
done
[ ${#CHECKOUTS[@]} -gt 0 ] || { echo "bench-net-ab: name at least one CHECKOUT; see --help" >&2; exit 2; }
for c in "${CHECKOUTS[@]}"; do
  [ -x "$c/iovirt" ] && [ -x "$c/scripts/bench-net.sh" ] \
    || { echo "bench-net-ab: $c is not an iovirt checkout (no ./iovirt or scripts/bench-net.sh)" >&2; exit 2; }
  "$c/iovirt" --version >/dev/null # builds each checkout now, not inside a measurement
done
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-net-ab.XXXXXX)"
mkdir -p "$DIR"

echo "# $(date -u '+%F %H:%M UTC'), $TOPOLOGY, sizes $SIZES, poll-us $POLL, ${SECS} s after ${WARMUP} s; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# checkout round backend frame-bytes poll-us 1 Mpps backend-ns/frame backend-core-% frontend-core-% [drops]"
for r in $(seq 1 "$ROUNDS"); do
  for c in "${CHECKOUTS[@]}"; do
    name="$(basename "$c")"
    out="$DIR/$name-$r"
    (cd "$c" && scripts/bench-net.sh --topology "$TOPOLOGY" --rounds 1 --seconds "$SECS" --warmup "$WARMUP" \
      --sizes "$SIZES" --poll-us "$POLL" --charts "$out" --dir "$out" > "$out.table" 2> "$out.log") \
      || { echo "bench-net-ab: $name round $r failed, see $out.log" >&2; exit 1; }
    grep -E '^(dpdk|iovirt) ' "$out/runs.txt" | sed "s|^|$name $r |"
  done
done
echo "# logs: $DIR" >&2
