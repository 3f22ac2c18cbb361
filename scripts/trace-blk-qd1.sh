#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Per-request stage breakdown of `iovirt serve blk` at queue depth 1: where the time between the driver's kick and
# its next kick goes (kick -> wake-up -> pop -> submit -> complete -> push), from kernel tracepoints recorded with
# `perf` on both CPUs while `iovirt bench blk` runs 4 KiB random reads at QD 1 against a buffered image.
#
#   scripts/trace-blk-qd1.sh [--dir DIR] [--boost N] [--image FILE]
#
# The backend is pinned to CPU 0, the client to CPU 1. Events: the client's write() on the kick eventfd, the
# scheduler's waking/wakeup/switch of the backend thread, the backend's io_uring_enter calls and io_uring's
# submit/complete of the READ. Each tracepoint costs ~0.3-1 µs here, so the stages are slightly inflated; the
# untraced run's latency is printed for comparison. --boost N (as root, e.g. -15) runs everything in its own
# scheduler autogroup at nice N: on a machine with kernel.sched_autogroup_enabled=1, per-process nice values do not
# compete with other sessions' work, so this is the way to give the benchmark its cores on a shared machine.
# Needs: perf (apt-get install linux-perf), python3, jq; the kernel's tracepoints.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
DIR=""
BOOST=0
IMAGE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR="$2"; shift 2 ;;
    --boost) BOOST="$2"; shift 2 ;;
    --image) IMAGE="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "trace-blk-qd1: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "${TRACE_BLK_INNER:-}" != 1 ] && [ "$BOOST" != 0 ]; then # re-run in a new session (autogroup) at nice BOOST
  exec setsid env TRACE_BLK_INNER=1 bash -c 'echo "$0" > /proc/$$/autogroup && exec "$@"' "$BOOST" "$0" --dir "$DIR" \
    --image "$IMAGE" --boost "$BOOST"
fi
for tool in perf python3 jq; do
  command -v "$tool" >/dev/null || { echo "trace-blk-qd1: '$tool' is missing — apt-get install linux-perf python3 jq" >&2; exit 1; }
done
"$ROOT/iovirt" --version >/dev/null
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-trace-blk.XXXXXX)"
mkdir -p "$DIR"
if [ -z "$IMAGE" ]; then IMAGE="$DIR/disk.raw"; [ -f "$IMAGE" ] || dd if=/dev/urandom of="$IMAGE" bs=1M count=256 status=none; fi
cat "$IMAGE" > /dev/null # reads come from the page cache
. "$ROOT/scripts/lib/children.sh"
NICE=(); [ "$BOOST" != 0 ] && NICE=(nice -n "$BOOST")

run() { # tag, trace(0|1)
  rm -f "$DIR/b.sock"
  "${NICE[@]}" taskset -c 0 "$ROOT/iovirt" serve blk --image "$IMAGE" --socket "$DIR/b.sock" > "$DIR/backend-$1.log" 2>&1 &
  PIDS+=($!); local be=$!
  for _ in $(seq 1 1200); do listening "$DIR/b.sock" && break; sleep 0.1; done
  "${NICE[@]}" taskset -c 1 "$ROOT/iovirt" bench blk --socket "$DIR/b.sock" --rw randread --qd 1 --seconds 15 --warmup 3 \
    --json > "$DIR/client-$1.json" 2> "$DIR/client-$1.err" &
  local cl=$!
  if [ "$2" = 1 ]; then
    for _ in $(seq 1 1200); do grep -q 'frontend pid .* connected' "$DIR/backend-$1.log" && break; sleep 0.1; done
    sleep 4 # past the client's 3 s warm-up; perf itself needs seconds to set up its tracepoints here
    local ctid
    ctid="$(grep -lx 'bench-blk-q0' /proc/$cl/task/*/comm 2>/dev/null | head -1 | cut -d/ -f5)" || true
    # the client JVM's pid is the launcher's (it execs java); write() is traced for its queue thread only, not
    # for perf's own writes of the trace
    [ -n "$ctid" ] || { echo "trace-blk-qd1: no bench-blk-q0 thread in process $cl" >&2; exit 1; }
    perf record -q -o "$DIR/trace.data" -a -e syscalls:sys_enter_write --filter "common_pid == $ctid" \
      -e syscalls:sys_exit_write --filter "common_pid == $ctid" \
      -e syscalls:sys_enter_io_uring_enter,syscalls:sys_exit_io_uring_enter \
      -e syscalls:sys_enter_epoll_wait,syscalls:sys_exit_epoll_wait,syscalls:sys_enter_epoll_pwait,syscalls:sys_exit_epoll_pwait \
      -e syscalls:sys_enter_read --filter "common_pid != $ctid" -e syscalls:sys_enter_preadv,syscalls:sys_enter_pwritev \
      -e sched:sched_waking,sched:sched_wakeup,sched:sched_switch \
      -e io_uring:io_uring_submit_req,io_uring:io_uring_complete -- sleep 0.5 > /dev/null 2>&1
  fi
  wait "$cl"
  cleanup
  jq -r --arg t "$1" '"\($t): \(.iops | round) IOPS, p50 \(.latency_ns.p50 / 1000) µs, p99 \(.latency_ns.p99 / 1000) µs, backend CPU \(.backend_cpu_us_per_io * 10 | round / 10) µs/IO, client core \((.client_core_percent // (.client_cpu_us_per_io * .iops / 1e4)) | round) %"' "$DIR/client-$1.json"
}
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), load average $(cut -d' ' -f1-3 /proc/loadavg), boost $BOOST"
run untraced 0
run traced 1
perf script --ns -i "$DIR/trace.data" -F comm,tid,cpu,time,event,trace 2>/dev/null > "$DIR/trace.txt"
python3 - "$DIR/trace.txt" <<'PY'
"""Per-request stage breakdown from `perf script -F comm,tid,cpu,time,event,trace` of a QD1 vhost-user-blk run:
the client's kick write, the backend's wake-up, its io_uring_enter calls, the read, and back."""
import re, sys, statistics
ev = []
for line in open(sys.argv[1]):
    m = re.match(r'\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$', line)
    if m:
        ev.append((float(m.group(4)) * 1e6, int(m.group(2)), m.group(5), m.group(6), m.group(1)))
# the client's queue thread is "bench-blk-q0"; the backend's queue thread is the one it wakes most often
client = next(tid for (_, tid, e, a, comm) in ev if comm == 'bench-blk-q0')
wakees = {}
for (_, tid, e, a, _) in ev:
    if tid == client and e == 'sched:sched_waking':
        m = re.search(r' pid=(\d+)', a)
        wakees[int(m.group(1))] = wakees.get(int(m.group(1)), 0) + 1
backend = max(wakees, key=wakees.get)
stages = {}
def add(k, v): stages.setdefault(k, []).append(v)
i = 0; n = len(ev); cycles = 0
while i < n:
    t, tid, e, a, _ = ev[i]
    if tid == client and e == 'syscalls:sys_enter_write':
        t0 = t; st = {}
        j = i + 1
        seq = []
        while j < n and not (ev[j][1] == client and ev[j][2] == 'syscalls:sys_enter_write'):
            seq.append(ev[j]); j += 1
        # walk the expected order
        def find(pred, start):
            for k in range(start, len(seq)):
                if pred(seq[k]): return k
            return None
        k1 = find(lambda x: x[1] == client and x[2] == 'sched:sched_waking' and f'pid={backend}' in x[3], 0)
        k2 = find(lambda x: x[2] == 'sched:sched_wakeup' and f'pid={backend}' in x[3], 0)
        kx = find(lambda x: x[1] == client and x[2] == 'syscalls:sys_exit_write', 0)
        k3 = find(lambda x: x[2] == 'sched:sched_switch' and f'next_pid={backend}' in x[3], 0)
        k4 = find(lambda x: x[1] == backend and x[2] == 'syscalls:sys_exit_io_uring_enter', k3 or 0) if k3 is not None else None
        k5 = find(lambda x: x[1] == backend and x[2] == 'syscalls:sys_enter_io_uring_enter' and 'to_submit: 0x00000001' in x[3], k4 or 0) if k4 is not None else None
        k6 = find(lambda x: x[1] == backend and x[2] == 'io_uring:io_uring_submit_req', k5 or 0) if k5 is not None else None
        k7 = find(lambda x: x[1] == backend and x[2] == 'io_uring:io_uring_complete' and 'result 4096' in x[3], k6 or 0) if k6 is not None else None
        k8 = find(lambda x: x[1] == backend and x[2] == 'syscalls:sys_exit_io_uring_enter', k7 or 0) if k7 is not None else None
        k9 = find(lambda x: x[1] == backend and x[2] == 'syscalls:sys_enter_io_uring_enter' and 'to_submit: 0x00000000' in x[3], k8 or 0) if k8 is not None else None
        k10 = find(lambda x: x[2] == 'sched:sched_switch' and f'prev_pid={backend}' in x[3], k9 or 0) if k9 is not None else None
        if None not in (k1, k2, kx, k3, k4, k5, k6, k7, k8, k9) and j < n:
            T = lambda k: seq[k][0]
            add('1 client write(kick) -> waking backend (eventfd -> io_uring poll -> task_add)', T(k1) - t0)
            add('2 waking -> wakeup (cross-CPU wake)', T(k2) - T(k1))
            add('   client write(kick) syscall, total', T(kx) - t0)
            add('3 wakeup -> backend on CPU', T(k3) - T(k2))
            add('4 on CPU -> io_uring_enter returns (task work: kick CQE)', T(k4) - T(k3))
            add('5 user: reap kick, pop chain, prepare READ SQE', T(k5) - T(k4))
            add('6 io_uring_enter(submit 1): enter -> submit_req', T(k6) - T(k5))
            add('7 READ 4 KiB from page cache (submit_req -> complete)', T(k7) - T(k6))
            add('8 complete -> io_uring_enter returns', T(k8) - T(k7))
            add('9 user: reap READ CQE, push used, check notify', T(k9) - T(k8))
            add('10 backend waits again -> client\'s next kick (client polls used, records, submits next)', ev[j][0] - T(k9))
            if k10 is not None:
                add('   backend io_uring_enter(wait) -> switched out', T(k10) - T(k9))
            add('= whole cycle (kick to next kick)', ev[j][0] - t0)
            cycles += 1
        i = j
    else:
        i += 1
# Whatever the backend's design: the system calls its queue thread makes per request (kick to next kick), by kind
seqs = {}
i = 0
while i < n:
    if ev[i][1] == client and ev[i][2] == 'syscalls:sys_enter_write':
        j = i + 1
        seq = []
        while j < n and not (ev[j][1] == client and ev[j][2] == 'syscalls:sys_enter_write'):
            if ev[j][1] == backend and ev[j][2].startswith('syscalls:sys_enter_'):
                seq.append(ev[j][2][len('syscalls:sys_enter_'):])
            j += 1
        if j < n:
            key = ' '.join(seq)
            seqs[key] = seqs.get(key, 0) + 1
        i = j
    else:
        i += 1
total = sum(seqs.values())
print('backend system calls per request (kick to next kick), most frequent sequences:')
for k, c in sorted(seqs.items(), key=lambda kv: -kv[1])[:4]:
    print(f'  {100 * c / total:5.1f} %  {k or "(none)"}')
print(f'{cycles} complete request cycles (client thread {client}, backend queue thread {backend})')
if cycles == 0:
    print('no cycle matched the io_uring pattern (kick, wake, io_uring_enter returns, submit READ, complete, wait): '
          'the backend may serve synchronously; see the raw trace')
print('| stage | median µs | p90 µs |')
print('|---|---:|---:|')
for k in stages: # in the order first seen, which is the order of the stages
    v = sorted(stages[k])
    print(f'| {k} | {statistics.median(v):.1f} | {v[int(len(v)*0.9)]:.1f} |')
PY
echo "trace-blk-qd1: raw files in $DIR" >&2
