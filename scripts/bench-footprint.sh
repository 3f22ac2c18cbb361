#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Memory footprint and start-up time of one iovirt backend process serving one virtio-blk and one virtio-net device,
# both in use by real frontends. Prints one Markdown table row (and a header with --header) on stdout.
#
#   scripts/bench-footprint.sh [--seconds S] [--label TEXT] [--java-opts "OPTS"] [--dir DIR] [--header] [--nmt] [--starts N]
#
# The backend is `iovirt vm run NAME --disk pv:IMAGE --nic pv --serve`: one JVM running a vhost-user-blk device and
# the switch with one vhost-user-net port (what a per-VM backend runs). Its JVM options are the launcher's, plus
# --java-opts (IOVIRT_JAVA_OPTS, which comes last and so overrides). While it runs, for S seconds (default 40):
#   blk: `iovirt bench blk` (a virtio-blk driver without a VM, its own JVM) — randread, 4 KiB, QD 32, 1 queue
#   net: DPDK testpmd with net_virtio_user, txonly 64-byte frames into the port
# The backend's /proc/PID/smaps is read 10 s after both frontends connected (the JIT compilers still at work) and
# after S seconds (steady state): RSS, the part that maps the frontends' shared memory (shared mappings of memfd
# files: the bench's "guest RAM" and testpmd's memory), and the rest, which is the footprint.
# Start-up: wall time from launching the process until both vhost-user sockets exist (it listens on them), and the
# same for `iovirt serve blk` alone (the median of --starts starts each, default 5); also the CPU time the process
# used until then, which a loaded machine does not inflate. Env (e.g. MALLOC_ARENA_MAX) reaches the backend as is.
# --nmt: also runs the backend with -XX:NativeMemoryTracking=summary and saves `jcmd PID VM.native_memory summary`
# as DIR/nmt.txt (where the JVM's memory goes; NMT itself adds a little, so that row is not a footprint to quote).
# Raw files stay in DIR (default: a new temporary directory, printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"

SECS=40
LABEL="launcher defaults"
OPTS=""
DIR=""
HEADER=0
NMT=0
STARTS=5
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECS="$2"; shift 2 ;;
    --label) LABEL="$2"; shift 2 ;;
    --java-opts) OPTS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --header) HEADER=1; shift ;;
    --nmt) NMT=1; shift ;;
    --starts) STARTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-footprint: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

TESTPMD="$("$ROOT/scripts/install-dpdk.sh")" || { echo "bench-footprint: dpdk-testpmd is not available" >&2; exit 1; }
[ "$NMT" = 1 ] && OPTS="-XX:NativeMemoryTracking=summary $OPTS"
"$ROOT/iovirt" --version >/dev/null # builds the project when stale, and checks for JDK 25

[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-footprint.XXXXXX)"
mkdir -p "$DIR/state"
IMAGE="$DIR/disk.raw"
[ -f "$IMAGE" ] || { truncate -s 256M "$IMAGE"; }
. "$ROOT/scripts/lib/children.sh"

now_ms() { date +%s%3N; }

# Waits until every socket named in $3.. exists; prints the milliseconds since $1 and the CPU milliseconds process $2
# used until then (user + system, all threads: on a loaded machine the wall time measures the load, this does not).
wait_sockets() { # start_ms pid sockets...
  local t0="$1" pid="$2"; shift 2
  for _ in $(seq 1 12000); do
    local all=1
    for s in "$@"; do listening "$s" || all=0; done
    [ $all = 1 ] && { echo "$(( $(now_ms) - t0 )) $(awk '{print ($14 + $15) * 10}' "/proc/$pid/stat")"; return 0; }
    kill -0 "$pid" 2>/dev/null || { echo "bench-footprint: the backend exited before listening" >&2; return 1; }
    sleep 0.005
  done
  echo "bench-footprint: the backend did not listen within 120 s" >&2; return 1
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# ---- start-up time of `serve blk` alone (to its socket listening) ----------------------------------------------
startups=()
for i in $(seq 1 "$STARTS"); do
  rm -f "$DIR/s.sock"
  t0="$(now_ms)"
  IOVIRT_JAVA_OPTS="$OPTS" "$ROOT/iovirt" serve blk --image "$IMAGE" --socket "$DIR/s.sock" > "$DIR/serve-$i.log" 2>&1 &
  PIDS+=($!)
  startups+=("$(wait_sockets "$t0" "$!" "$DIR/s.sock")")
  cleanup
done
SERVE_MS="$(printf '%s\n' "${startups[@]}" | awk '{print $1}' | median)"
SERVE_CPU="$(printf '%s\n' "${startups[@]}" | awk '{print $2}' | median)"

# ---- the per-VM backend: one blk + one net device --------------------------------------------------------------
vm_startups=()
start_vm() {
  local t0 runroot
  runroot="$DIR/tmp"; rm -rf "$runroot"; mkdir -p "$runroot"
  t0="$(now_ms)"
  IOVIRT_JAVA_OPTS="$OPTS -Djava.io.tmpdir=$runroot" "$ROOT/iovirt" vm run fp --disk "pv:$IMAGE" --nic pv --serve \
    --state-dir "$DIR/state" > "$DIR/backend.out" 2> "$DIR/backend.err" &
  PIDS+=($!)
  BEPID=$!
  # the run directory (iovirt-vm-RANDOM: no VM name, to keep socket paths short) is created inside
  # java.io.tmpdir, here a fresh one per start; the sockets appear there
  for _ in $(seq 1 6000); do
    RUNDIR="$(find "$runroot" -maxdepth 1 -name 'iovirt-vm-*' -print -quit)"
    [ -n "$RUNDIR" ] && break
    kill -0 "$BEPID" 2>/dev/null || { echo "bench-footprint: backend exited:" >&2; cat "$DIR/backend.err" >&2; exit 1; }
    sleep 0.005
  done
  vm_startups+=("$(wait_sockets "$t0" "$BEPID" "$RUNDIR/disk0.sock" "$RUNDIR/nic0.sock")")
}
for _ in $(seq 2 "$STARTS"); do start_vm; cleanup; done
start_vm
VM_MS="$(printf '%s\n' "${vm_startups[@]}" | awk '{print $1}' | median)"
VM_CPU="$(printf '%s\n' "${vm_startups[@]}" | awk '{print $2}' | median)"

THREADS_IDLE="$(ls "/proc/$BEPID/task" | wc -l)"
# Frontends run until told to stop: testpmd reads its commands from a FIFO, bench blk runs longer than needed.
rm -f "$DIR/testpmd.in" # a --dir reused after an interrupted run
mkfifo "$DIR/testpmd.in"
stdbuf -oL "$TESTPMD" --no-huge -m 512 --no-pci --file-prefix="fp$$" --vdev "net_virtio_user0,path=$RUNDIR/nic0.sock" \
  -- -i --forward-mode=txonly --txpkts=64 --total-num-mbufs=16384 < "$DIR/testpmd.in" > "$DIR/testpmd.log" 2>&1 &
PIDS+=($!)
NETPID=$!
exec 8>"$DIR/testpmd.in"
echo start >&8
IOVIRT_JAVA_OPTS="" "$ROOT/iovirt" bench blk --socket "$RUNDIR/disk0.sock" --rw randread --bs 4096 --qd 32 \
  --seconds "$((SECS + 30))" --warmup 1 --queues 1 --json > "$DIR/blk.json" 2> "$DIR/blk.err" &
PIDS+=($!)
BLKPID=$!
for _ in $(seq 1 1200); do # both frontends connected (the backend logs each connection)
  [ "$(grep -c 'frontend pid .* connected' "$DIR/backend.err")" -ge 2 ] && break
  sleep 0.1
done
[ "$(grep -c 'frontend pid .* connected' "$DIR/backend.err")" -ge 2 ] || {
  echo "bench-footprint: the frontends did not both connect within 120 s" >&2; cat "$DIR/backend.err" >&2; exit 1; }
sleep 10
cp "/proc/$BEPID/smaps" "$DIR/smaps-10s"
sleep "$((SECS > 10 ? SECS - 10 : 0))"
# sampled with both devices busy, after S seconds of traffic
cp "/proc/$BEPID/smaps" "$DIR/smaps"
cp "/proc/$BEPID/status" "$DIR/status"
THREADS_BUSY="$(ls "/proc/$BEPID/task" | wc -l)"
if [ "$NMT" = 1 ]; then "$(dirname "$(readlink "/proc/$BEPID/exe")")/jcmd" "$BEPID" VM.native_memory summary > "$DIR/nmt.txt" 2>&1 || true; fi
printf 'show port stats 0\nstop\nquit\n' >&8
exec 8>&-
wait "$NETPID" || true
wait "$BLKPID" || { echo "bench-footprint: bench blk failed:" >&2; cat "$DIR/blk.err" >&2; exit 1; }
grep -q 'TX-packets' "$DIR/testpmd.log" || { echo "bench-footprint: testpmd sent nothing:" >&2; tail "$DIR/testpmd.log" >&2; exit 1; }
TX="$(grep -E '^ +TX-packets: [0-9]+' "$DIR/testpmd.log" | tail -1 | awk '{print $2}')"
IOPS="$(jq -r '.iops | round' "$DIR/blk.json")"
# RSS split: shared memfd mappings are the frontends' memory (guest RAM); everything else is the backend's own.
split() { awk '
  /^[0-9a-f]+-[0-9a-f]+ / { guest = ($2 ~ /s$/ && $6 ~ /^\/memfd:/); anon = ($6 == "" || $6 ~ /^\[/); next }
  /^Rss:/ { rss += $2; if (guest) g += $2; else if (anon) a += $2; else f += $2 }
  END { print rss, g, a, f }' "$1"; }
read -r RSS GUEST ANON FILE <<< "$(split "$DIR/smaps")"
read -r RSS10 GUEST10 _ _ <<< "$(split "$DIR/smaps-10s")"
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

if [ "$HEADER" = 1 ]; then
  echo "| JVM options (beyond the launcher's) | beyond guest mappings MiB at 10 s | at ${SECS} s | RSS MiB | frontends' shared memory MiB | anon / file MiB | threads idle / busy | serve blk start: wall / CPU ms | blk+net backend start: wall / CPU ms | load avg |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
fi
echo "| $LABEL | $(mib $((RSS10 - GUEST10))) | **$(mib $((RSS - GUEST)))** | $(mib "$RSS") | $(mib "$GUEST") | $(mib "$ANON") / $(mib "$FILE") | $THREADS_IDLE / $THREADS_BUSY | $SERVE_MS / $SERVE_CPU | $VM_MS / $VM_CPU | $(cut -d' ' -f1 /proc/loadavg) |"
echo "bench-footprint: traffic during the sample: bench blk $IOPS IOPS, testpmd sent $TX frames" >&2
echo "bench-footprint: raw files in $DIR (launcher: $(grep -o 'exec .*' "$ROOT/iovirt" | head -1 | cut -c1-60)...)" >&2
