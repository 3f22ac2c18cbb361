#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Side-by-side vhost-user-net benchmark: the iovirt switch's virtio-net port vs DPDK's own vhost PMD, both fed by
# the same frontend, DPDK testpmd with net_virtio_user. Prints a Markdown table on stdout.
#
#   scripts/bench-net.sh [--topology rxonly|p2p] [--seconds S] [--warmup S] [--rounds N] [--sizes "64 1500"]
#                        [--poll-us "0 adaptive"] [--poll-threads N] [--p2p-bursts N] [--backend-cpu N]
#                        [--client-cpu N] [--nice N] [--interval S]
#                        [--dir DIR] [--charts DIR] [--report-only --dir DIR]
#
# --topology rxonly (default): one frontend in txonly mode (--txpkts SIZE) into one backend port.
#   dpdk      dpdk-testpmd --vdev net_vhost0,iface=SOCK, forward mode rxonly (busy-polls, frees every packet)
#   iovirt    iovirt serve net --port vhost-user:SOCK[,poll-us=P]; the frames are switched (learn, look up, flood to
#             no other port): the port's transmit thread, the JIT and the GC all share the one core
#   After --warmup seconds (the JVM compiles its hot path) testpmd's "show port stats" is read twice, --seconds apart:
#   Tx-pps is what the backend took from the ring per second (the ring is full all the time: testpmd drops what does
#   not fit).
# --topology p2p: port to port through the backend (guest to guest). ONE frontend testpmd with two virtio-user ports
#   A (02:00:00:00:00:0a) and B (02:00:00:00:00:0b) on one forwarding lcore, forward mode io, ports paired: what
#   arrives on A is sent from B and vice versa, unchanged. "start tx_first --p2p-bursts" (default 8, 32 frames each,
#   --txpkts SIZE) puts frames A->B (source A, destination B: --eth-peer 0) and B->A in flight; then they circulate,
#   each crossing the backend once per lap, in both directions, as many per second as the slowest stage allows.
#   The bursts go in steps of at most 4 (128 frames a port; "stop", then "start tx_first" again, 1 s apart): all
#   at once, the frontend fills its 256-entry transmit ring within microseconds and drops what its ring cannot take
#   until the backend has consumed some — a backend that was asleep when the first frames came (iovirt's adaptive
#   polling) lost 64 frames a port that way, one that busy-polls (DPDK's) none, and the two then ran with 192 and 256
#   frames circulating each way (measured 2026-12-05 11:05). Stepwise, both keep every frame.
#   dpdk      dpdk-testpmd --vdev net_vhost0,iface=A --vdev net_vhost1,iface=B, forward mode io (paired: vhost0 rx ->
#             vhost1 tx and back; copies each frame out of one guest ring into an mbuf and into the other's ring)
#   iovirt    iovirt serve net --port vhost-user:A[,poll-us=P] --port vhost-user:B[,poll-us=P]: copies each frame
#             out, learns the source, finds the destination port (unicast, not flooded: the counters say) and copies
#             it into that guest's receive ring; one transmit thread per port, both on the backend's core
#   Rate = frames per second the frontend received on both ports (the far ends), over the window; drops = frames the
#   frontend could not send (its tx ring full) and frames the backend dropped, over the whole run.
#   Why not two testpmd processes (one txonly into A, one rxonly on B): on 2 CPUs both must share the client core,
#   and two busy-polling processes on one core take turns in scheduler slices of milliseconds, so B's 256-buffer
#   receive ring is full within microseconds of A's slice: measured with DPDK as the backend, B received 3 kpps and
#   98 % were dropped — that measures the scheduler, not the backends. One process polling both ports does not.
# --poll-threads N (default 0): iovirt serves the transmit queues of its ports on N shared poll threads
#   (serve net --poll-threads N: one loop round-robins batches over the queues, one idle strategy for all) instead of
#   one thread per queue; the report names it. With p2p and N=1 both ports' senders are one thread, as DPDK's one
#   forwarding lcore is.
# Levels (--interval S, default 2): the window is read every S seconds as well (S must divide --seconds), and each
#   backend's readings of a case, all rounds together, are split into an upper and a lower level where they fall
#   into two (the split that best separates them, taken when both sides have 3 readings or more and their medians
#   differ by 1.3x or more). On a VM whose host moves the two vCPUs between a near and a far placement, the rate
#   moves with it for tens of seconds at a time under every backend (docs/benchmarks.md, 2026-12-05 07:50-09:17),
#   so a run's one number mixes the placements at random; a second table compares the backends level for level
#   (upper with upper, lower with lower; "-" where only one of them showed two levels). Readings are in
#   DIR/intervals.txt, the levels in DIR/levels.txt (backend size poll upper n lower n).
# Backends are pinned with taskset to --backend-cpu (one core for everything the backend does), the frontend to
# --client-cpu.
# --nice N (as root, e.g. -10) runs backend and frontend at that priority, for both backends alike, so that other
# work on a shared machine disturbs the measurement less: in a scheduler autogroup of their own at nice N (with
# kernel.sched_autogroup_enabled=1, Debian's default, a process's own nice value only counts within its session).
# Charts (gnuplot, PNG): median Mpps, the two levels' medians (when the readings were kept) and backend CPU
# ns/packet per backend and frame size, side by side, written to --charts DIR (default docs/ of this repository) as
# bench-net.png (rxonly) or bench-net-p2p.png (p2p).
# Each run also reports the frontend's core % (its CPU time over the window): it busy-polls, so below 95 % other
# work took its core and that run is noise-bound. CPU per frame = backend CPU time over the window / frames.
# Raw logs stay in DIR (default: a new temporary directory, printed at the end); --report-only --dir DIR prints the
# table and redraws the chart from a kept run's DIR/runs.txt (same --topology, --sizes and --poll-us) without running.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"

MEASURE=10
WARMUP=8
INTERVAL=2
ROUNDS=3
SIZES="64 1500"
POLLS="0 adaptive"
BACKEND_CPU=0
CLIENT_CPU=1
NICE=0
DIR=""
CHARTS="$ROOT/docs"
TOPOLOGY=rxonly
BURSTS=8
PTHREADS=0
REPORT_ONLY=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --topology) TOPOLOGY="$2"; shift 2 ;;
    --p2p-bursts) BURSTS="$2"; shift 2 ;;
    --report-only) REPORT_ONLY=1; shift ;;
    --seconds) MEASURE="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --poll-us) POLLS="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --charts) CHARTS="$2"; shift 2 ;;
    --poll-threads) PTHREADS="$2"; shift 2 ;;
    -h|--help) awk 'NR > 2 && !/^#/ {exit} NR > 2 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "bench-net: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$TOPOLOGY" in rxonly|p2p) ;; *) echo "bench-net: --topology must be rxonly or p2p" >&2; exit 2 ;; esac
case "$MEASURE$INTERVAL" in *[!0-9]*) echo "bench-net: --seconds and --interval are whole seconds" >&2; exit 2 ;; esac
if [ "$INTERVAL" -lt 1 ] || [ "$MEASURE" -lt "$INTERVAL" ] || [ $((MEASURE % INTERVAL)) != 0 ]; then
  echo "bench-net: --interval ($INTERVAL) must divide --seconds ($MEASURE)" >&2; exit 2
fi
NINT=$((MEASURE / INTERVAL))
if [ "$NICE" != 0 ] && [ "$REPORT_ONLY" = 0 ] && [ "${BENCH_BOOSTED:-}" != 1 ]; then
  exec setsid env BENCH_BOOSTED=1 bash -c 'echo "$0" > /proc/$$/autogroup && exec "$@"' "$NICE" "$0" "${ARGS[@]}"
fi
command -v gnuplot >/dev/null || "$ROOT/scripts/install-deps.sh" >&2 || {
  echo "bench-net: gnuplot is missing — apt-get install gnuplot-nox" >&2; exit 1; }
if [ "$REPORT_ONLY" = 0 ]; then
  TESTPMD="$("$ROOT/scripts/install-dpdk.sh")" || { echo "bench-net: dpdk-testpmd is not available" >&2; exit 1; }
  command -v taskset >/dev/null || { echo "bench-net: taskset is missing — apt-get install util-linux" >&2; exit 1; }
  "$ROOT/iovirt" --version >/dev/null # builds the project when stale, and checks for JDK 25
fi

[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-net.XXXXXX)"
mkdir -p "$DIR"
. "$ROOT/scripts/lib/children.sh"

wait_socket() { # socket pid log
  for _ in $(seq 1 600); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench-net: backend exited before listening; its log:" >&2; cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-net: backend did not listen on $1 within 60 s" >&2; exit 1
}

# CPU ticks used by the backend (all threads) and by the frontend testpmd over the measurement window — the same
# window as testpmd's two statistics readings (started WARMUP + 1 s after the frontend): prints "backend frontend".
window_ticks() { # frontend_pid (timeout's) backend_pid [seconds the frontend takes to start its traffic]
  local t0 t1 f0 f1 fepmd
  sleep "$((1 + ${3:-0} + WARMUP))"
  # the frontend testpmd: timeout's child (nice, taskset and stdbuf exec into it)
  fepmd="$(cat /proc/"$1"/task/*/children 2>/dev/null | awk '{print $1; exit}')"
  t0="$(cpu_ticks "$2")"; f0="$(cpu_ticks "${fepmd:-0}")"
  sleep "$MEASURE"
  t1="$(cpu_ticks "$2")"; f1="$(cpu_ticks "${fepmd:-0}")"
  echo "$((t1 - t0)) $((f1 - f0))"
}

# The statistics command at the window's start and then every INTERVAL seconds to its end (NINT intervals).
readings() { echo "$1"; for _ in $(seq "$NINT"); do sleep "$INTERVAL"; echo "$1"; done; }

# One measurement: prints the frontend's Tx-pps over the measurement window (the mean of its intervals' rates; each
# interval's rate goes to DIR/intervals.txt).
run_case() { # backend size poll round
  local backend="$1" size="$2" poll="$3" round="$4"
  local tag="$backend-$size-p$poll-r$round" sock="$DIR/be.sock" belog fifo
  belog="$DIR/$tag-backend.log"
  rm -f "$sock"
  if [ "$backend" = dpdk ]; then
    fifo="$DIR/be.in"; rm -f "$fifo"; mkfifo "$fifo"
    # testpmd -i reads commands from the FIFO; stdbuf: its stdout is a file here
    nice -n "$NICE" taskset -c "$BACKEND_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$BACKEND_CPU,1@$BACKEND_CPU" --no-huge -m 512 \
      --no-pci --file-prefix="be$$" --vdev "net_vhost0,iface=$sock,queues=1" -- -i --forward-mode=rxonly \
      --total-num-mbufs=16384 < "$fifo" > "$belog" 2>&1 &
    PIDS+=($!)
    exec 8>"$fifo"
    wait_socket "$sock" "$!" "$belog"
    echo start >&8
  else
    IOVIRT_JAVA_OPTS="${BACKEND_JAVA_OPTS:-}" nice -n "$NICE" taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve net \
      --port "vhost-user:$sock,poll-us=$poll" --poll-threads "$PTHREADS" > "$belog" 2>&1 &
    PIDS+=($!)
    wait_socket "$sock" "$!" "$belog"
  fi
  local felog="$DIR/$tag-frontend.log" bepid="${PIDS[-1]}"
  { sleep 1; echo start; sleep "$WARMUP"; readings "show port stats 0"; echo stop; sleep 1; echo quit; } \
    | timeout "$((WARMUP + MEASURE + 60))" nice -n "$NICE" taskset -c "$CLIENT_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$CLIENT_CPU,1@$CLIENT_CPU" --no-huge -m 512 \
        --no-pci --file-prefix="fe$$" --vdev "net_virtio_user0,path=$sock" -- -i --forward-mode=txonly \
        --txpkts="$size" --total-num-mbufs=16384 > "$felog" 2>&1 &
  local fepid=$! ticks fticks
  read -r ticks fticks <<< "$(window_ticks "$fepid" "$bepid")"
  wait "$fepid" || true
  if [ "$backend" = dpdk ]; then echo stop >&8; echo quit >&8; exec 8>&-; fi
  cleanup
  local pps pkts mpps
  # each reading's Tx-pps is over the time since the one before (testpmd's clock); the first has none before it
  mpps="$(grep -E 'Tx-pps:' "$felog" | tail -n +2 | awk '{printf "%s%.3f", (NR > 1 ? " " : ""), $2 / 1e6}')"
  [ "$(echo "$mpps" | wc -w)" = "$NINT" ] || { echo "bench-net: $NINT Tx-pps readings expected in $felog" >&2; tail -20 "$felog" >&2; exit 1; }
  echo "$backend $size $poll $round $mpps" >> "$DIR/intervals.txt"
  pps="$(echo "$mpps" | awk '{for (i = 1; i <= NF; i++) s += $i; print s / NF * 1e6}')"
  pkts="$(grep -E '^ +TX-packets: [0-9]+ +TX-errors' "$felog" | awk 'NR == 1 {a = $2} {b = $2} END {print b - a}')"
  # Mpps, backend CPU ns per packet, backend core % (CPU time / wall time over the window), frontend core %
  awk -v pps="$pps" -v pkts="$pkts" -v ticks="$ticks" -v fticks="$fticks" -v hz="$(getconf CLK_TCK)" \
    -v s="$MEASURE" 'BEGIN { cpu = ticks / hz; printf "%.3f %.0f %.0f %.0f\n", pps / 1e6, (pkts > 0 ? cpu * 1e9 / pkts : 0),
      100 * cpu / s, 100 * fticks / hz / s }'
}

# One port-to-port measurement (--topology p2p): prints Mpps received by the frontend on both ports over the
# window, backend CPU ns/frame, backend core %, frontend core %, frames the frontend dropped (tx ring full) and frames
# the backend dropped, both over the whole run.
run_p2p() { # backend size poll round
  local backend="$1" size="$2" poll="$3" round="$4"
  local tag="p2p-$backend-$size-p$poll-r$round" sa="$DIR/a.sock" sb="$DIR/b.sock" belog fifo=""
  local mac_a=02:00:00:00:00:0a mac_b=02:00:00:00:00:0b
  belog="$DIR/$tag-backend.log"
  rm -f "$sa" "$sb"
  if [ "$backend" = dpdk ]; then
    fifo="$DIR/be.in"; rm -f "$fifo"; mkfifo "$fifo"
    nice -n "$NICE" taskset -c "$BACKEND_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$BACKEND_CPU,1@$BACKEND_CPU" --no-huge -m 512 \
      --no-pci --file-prefix="be$$" --vdev "net_vhost0,iface=$sa,queues=1" --vdev "net_vhost1,iface=$sb,queues=1" \
      -- -i --forward-mode=io --total-num-mbufs=16384 < "$fifo" > "$belog" 2>&1 &
    PIDS+=($!)
    exec 8>"$fifo"
  else
    IOVIRT_JAVA_OPTS="${BACKEND_JAVA_OPTS:-}" nice -n "$NICE" taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve net \
      --port "vhost-user:$sa,poll-us=$poll" --port "vhost-user:$sb,poll-us=$poll" --poll-threads "$PTHREADS" \
      > "$belog" 2>&1 &
    PIDS+=($!)
  fi
  local bepid="${PIDS[-1]}"
  wait_socket "$sa" "$bepid" "$belog"
  wait_socket "$sb" "$bepid" "$belog"
  local felog="$DIR/$tag-frontend.log"
  # DPDK's backend starts forwarding once the frontend has connected (a vhost port started before its frontend
  # connected dropped everything in a trial run); io mode, ports paired: A's frames go out on B and back.
  { sleep 1; if [ -n "$fifo" ]; then echo start >&8; fi
    local left="$BURSTS" step
    while [ "$left" -gt 0 ]; do
      step=$((left < 4 ? left : 4)); left=$((left - step))
      echo "start tx_first $step"; sleep 1; if [ "$left" -gt 0 ]; then echo stop; fi
    done
    sleep "$WARMUP";
    readings "show port stats all"; echo stop; sleep 1; echo quit; } \
    | timeout "$((WARMUP + MEASURE + 60))" nice -n "$NICE" taskset -c "$CLIENT_CPU" stdbuf -oL "$TESTPMD" \
        --lcores="0@$CLIENT_CPU,1@$CLIENT_CPU" --no-huge -m 512 --no-pci --file-prefix="fe$$" \
        --vdev "net_virtio_user0,path=$sa,mac=$mac_a" --vdev "net_virtio_user1,path=$sb,mac=$mac_b" \
        -- -i --forward-mode=io --eth-peer="0,$mac_b" --eth-peer="1,$mac_a" --txpkts="$size" \
        --total-num-mbufs=16384 > "$felog" 2>&1 &
  local fepid=$! ticks fticks
  read -r ticks fticks <<< "$(window_ticks "$fepid" "$bepid" "$(((BURSTS + 3) / 4))")"
  wait "$fepid" || true
  if [ -n "$fifo" ]; then echo stop >&8; sleep 1; echo quit >&8; exec 8>&-; fi
  cleanup # iovirt logs its final counters on SIGTERM
  local frames fedrop bedrop mpps
  # NIC statistics, RX-packets of port 0 and 1 at the first and the last reading
  frames="$(grep -E '^ +RX-packets: [0-9]+ +RX-missed' "$felog" | awk '{print $2}' | paste - - \
    | awk 'NR == 1 {a = $1 + $2} {b = $1 + $2} END {if (NR == '"$((NINT + 1))"') print b - a}')"
  [ -n "$frames" ] || { echo "bench-net: $((NINT + 1)) port statistics readings expected in $felog" >&2; tail -20 "$felog" >&2; exit 1; }
  # per interval: Rx-pps of both ports (each reading's is over the time since the one before; the first has none)
  mpps="$(grep -E 'Rx-pps:' "$felog" | awk '{print $2}' | paste - - | tail -n +2 \
    | awk '{printf "%s%.3f", (NR > 1 ? " " : ""), ($1 + $2) / 1e6}')"
  echo "$backend $size $poll $round $mpps" >> "$DIR/intervals.txt"
  # every "stop" prints the totals since the "start" before it
  fedrop="$(grep -A3 'Accumulated forward statistics' "$felog" | grep -E 'TX-dropped' | awk '{s += $4} END {print s + 0}')"
  if [ "$backend" = dpdk ]; then
    bedrop="$(grep -A3 'Accumulated forward statistics' "$belog" | grep -E 'TX-dropped' | tail -1 | awk '{print $4}')"
  else
    # every tx_dropped_* counter of both ports; unicast check: rx_flooded stays at the first frames per direction
    grep -A2 'final counters' "$belog" | tail -2 >&2 || true
    bedrop="$(grep -A2 'final counters' "$belog" | grep -oE 'tx_dropped_[a-z_]+ [0-9]+' | awk '{s += $2} END {print s + 0}')"
  fi
  awk -v frames="$frames" -v ticks="$ticks" -v fticks="$fticks" -v hz="$(getconf CLK_TCK)" \
    -v s="$MEASURE" -v fd="${fedrop:-0}" -v bd="${bedrop:-0}" 'BEGIN { cpu = ticks / hz;
      printf "%.3f %.0f %.0f %.0f %d %d\n", frames / s / 1e6, (frames > 0 ? cpu * 1e9 / frames : 0),
      100 * cpu / s, 100 * fticks / hz / s, fd, bd }'
}

# The cache-line round trip between the backend's and the client's CPU, measured just before each run (`iovirt bench
# c2c`, median ns): every ring access the other side just wrote costs one such transfer, and on a VM the host places
# the two vCPUs — a run on a slow placement is slow for any backend. Last column of each run line.
c2c() { "$ROOT/iovirt" bench c2c --cpus "$BACKEND_CPU,$CLIENT_CPU" --samples 10 --json 2>/dev/null \
  | jq -r '.round_trip_ns.median' 2>/dev/null || echo "-"; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

RUNS="$DIR/runs.txt"
if [ "$REPORT_ONLY" = 1 ]; then
  [ -s "$RUNS" ] || { echo "bench-net: --report-only needs --dir DIR of a kept run (DIR/runs.txt)" >&2; exit 2; }
  ROUNDS="$(awk '$4 > n {n = $4} END {print n}' "$RUNS")"
else
  echo "bench-net: load average before: $(cut -d' ' -f1-3 /proc/loadavg); nice $NICE; topology $TOPOLOGY; iovirt --poll-threads $PTHREADS; logs in $DIR" >&2
  RUN=run_case; [ "$TOPOLOGY" = p2p ] && RUN=run_p2p
  : > "$RUNS"; : > "$DIR/intervals.txt"
  for size in $SIZES; do
    for round in $(seq 1 "$ROUNDS"); do
      c="$(c2c)"; echo "dpdk $size 0 $round $($RUN dpdk "$size" 0 "$round") $c" | tee -a "$RUNS" >&2
      for poll in $POLLS; do
        c="$(c2c)"; echo "iovirt $size $poll $round $($RUN iovirt "$size" "$poll" "$round") $c" | tee -a "$RUNS" >&2
      done
    done
  done
  echo "bench-net: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
fi
: > "$DIR/chart.dat"

# every run, then the medians per case and the ratio of medians to DPDK's
if [ "$TOPOLOGY" = p2p ]; then
  echo "| frame | backend (pinned to 1 CPU), port A <-> port B | Mpps received (both directions) per run | median Mpps | vs DPDK | backend CPU ns/frame (median) | backend core % (median) | frontend (client) core % per run | dropped by frontend / backend per run | CPU-to-CPU round trip ns per run |"
  echo "|---|---|---|---:|---:|---:|---:|---|---|---|"
else
  echo "| frame | backend (pinned to 1 CPU) | Mpps per run | median Mpps | vs DPDK | backend CPU ns/packet (median) | backend core % (median) | frontend (client) core % per run | CPU-to-CPU round trip ns per run |"
  echo "|---|---|---|---:|---:|---:|---:|---|---|"
fi
PTNAME=""; [ "$PTHREADS" != 0 ] && PTNAME=", --poll-threads $PTHREADS"
med() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for size in $SIZES; do
  d="$(awk -v z="$size" '$1=="dpdk" && $2==z {print $5}' "$RUNS" | med)"
  for key in "dpdk 0" $(for p in $POLLS; do echo "iovirt:$p"; done); do
    b="${key%%[: ]*}"; p="${key##*[: ]}"
    sel="$(awk -v b="$b" -v z="$size" -v p="$p" '$1==b && $2==z && $3==p' "$RUNS")"
    runs="$(echo "$sel" | awk '{printf "%s%.2f", (NR>1?" ":""), $5}')"
    m="$(echo "$sel" | awk '{print $5}' | med)"
    c="$(echo "$sel" | awk '{print $6}' | med)"
    u="$(echo "$sel" | awk '{print $7}' | med)"
    fc="$(echo "$sel" | awk '{printf "%s%s", (NR>1?" ":""), $8}')"
    cc="$(echo "$sel" | awk -v f="$([ "$TOPOLOGY" = p2p ] && echo 11 || echo 9)" '{printf "%s%s", (NR>1?" ":""), $f}')"
    if [ "$TOPOLOGY" = p2p ]; then
      name="DPDK testpmd, 2 vhost PMD ports (io)"; [ "$b" = iovirt ] && name="iovirt switch, 2 vhost-user ports, poll-us=$p$PTNAME"
      drops="$(echo "$sel" | awk '{printf "%s%s / %s", (NR>1?", ":""), $9, $10}')"
      printf '| %s B | %s | %s | %.2f | %.2f | %.0f | %.0f | %s | %s | %s |\n' "$size" "$name" "$runs" "$m" "$(echo "$m / $d" | bc -l)" "$c" "$u" "$fc" "$drops" "$cc"
    else
      name="DPDK vhost PMD (rxonly)"; [ "$b" = iovirt ] && name="iovirt vhost-user port, poll-us=$p$PTNAME"
      printf '| %s B | %s | %s | %.2f | %.2f | %.0f | %.0f | %s | %s |\n' "$size" "$name" "$runs" "$m" "$(echo "$m / $d" | bc -l)" "$c" "$u" "$fc" "$cc"
    fi
    printf '"%s B\\n%s" %s %s %s %s %s\n' "$size" "$([ "$b" = iovirt ] && echo "iovirt\\n$(case "$p" in [0-9]*) echo "poll-us=$p" ;; *) echo "$p poll" ;; esac)$([ "$PTHREADS" != 0 ] && echo "\\npoll-threads=$PTHREADS")" || { [ "$TOPOLOGY" = p2p ] && echo "DPDK\\n2 ports (io)" || echo "DPDK\\nvhost PMD"; })" "$m" "$c" "$u" \
      "$([ "$b" = iovirt ] && echo 1 || echo 2)" "$(echo "$sel" | awk '{print $8}' | med)" >> "$DIR/chart.dat"
  done
done
# Level by level (see --interval in the comment above): each backend's readings of a case, all rounds, split into
# two levels where they fall into two; then upper compared with upper and lower with lower.
levels() { # readings (Mpps), one per line: prints "UPPER N LOWER N" (medians, counts), "MEDIAN N - 0" for one level
  sort -g | awk '
    function med(a, b,   m) { m = b - a + 1; return (m % 2) ? v[a + (m - 1) / 2] : (v[a + m / 2 - 1] + v[a + m / 2]) / 2 }
    { v[++n] = $1; s += $1 }
    END {
      if (n == 0) { print "- 0 - 0"; exit }
      # the split with the largest between-level variance (Otsu), if it separates two real levels
      for (i = 1; i < n; i++) { c += v[i]; b = i * (n - i) * ((s - c) / (n - i) - c / i) ^ 2; if (b > best) { best = b; k = i } }
      if (k >= 3 && n - k >= 3 && med(k + 1, n) >= 1.3 * med(1, k)) printf "%.2f %d %.2f %d\n", med(k + 1, n), n - k, med(1, k), k
      else printf "%.2f %d - 0\n", med(1, n), n
    }'
}
div() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
LEVELS="$DIR/levels.txt"
if [ -s "$DIR/intervals.txt" ]; then
  : > "$LEVELS"
  for size in $SIZES; do
    for key in "dpdk 0" $(for p in $POLLS; do echo "iovirt:$p"; done); do
      b="${key%%[: ]*}"; p="${key##*[: ]}"
      echo "$b $size $p $(awk -v b="$b" -v z="$size" -v p="$p" '$1==b && $2==z && $3==p {for (i = 5; i <= NF; i++) print $i}' \
        "$DIR/intervals.txt" | levels)" >> "$LEVELS"
    done
  done
  echo
  echo "Level by level: every ${INTERVAL}-second reading of all rounds, per backend, split into an upper and a lower level where they fall into two (upper with upper, lower with lower; \"-\": only one of the two backends showed two levels)."
  echo
  echo "| frame | backend | readings | upper level: readings, median Mpps | lower level: readings, median Mpps | vs DPDK, upper | vs DPDK, lower |"
  echo "|---|---|---:|---|---|---:|---:|"
  while read -r b size p hi nhi lo nlo; do
    read -r _ _ _ dhi _ dlo dnlo <<< "$(awk -v z="$size" '$1 == "dpdk" && $2 == z' "$LEVELS")"
    if [ "$nlo" = 0 ]; then up="one level: $nhi, $hi"; down="—"; else up="$nhi, $hi"; down="$nlo, $lo"; fi
    rhi="" rlo=""
    if [ "$b" != dpdk ]; then
      if [ "$nlo" = 0 ] && [ "$dnlo" = 0 ]; then rhi="$(div "$hi" "$dhi") (one level each)"; rlo="—"
      elif [ "$nlo" = 0 ] || [ "$dnlo" = 0 ]; then rhi="-"; rlo="-"
      else rhi="$(div "$hi" "$dhi")"; rlo="$(div "$lo" "$dlo")"; fi
    fi
    name="DPDK"; [ "$b" = iovirt ] && name="iovirt, poll-us=$p$PTNAME"
    printf '| %s B | %s | %s | %s | %s | %s | %s |\n' "$size" "$name" "$((nhi + nlo))" "$up" "$down" "$rhi" "$rlo"
  done < "$LEVELS"
fi

mkdir -p "$CHARTS"
PNG="$CHARTS/bench-net.png"
TITLE="vhost-user-net: testpmd virtio-user txonly into a backend on one CPU"
if [ "$TOPOLOGY" = p2p ]; then
  PNG="$CHARTS/bench-net-p2p.png"
  TITLE="vhost-user-net port to port: one testpmd, virtio-user A <-> B (io, both directions) through a backend on one CPU"
fi
# the level medians beside each case (levels.txt lists the cases in chart.dat's order): upper, lower (0: one level)
PANELS=2 WIDTH=1400
if [ -s "$LEVELS" ] && [ "$(wc -l < "$LEVELS")" = "$(wc -l < "$DIR/chart.dat")" ]; then
  awk '{print $4, ($7 > 0 ? $6 : 0)}' "$LEVELS" | paste -d' ' "$DIR/chart.dat" - > "$DIR/chart-levels.dat"
  PANELS=3 WIDTH=2000
fi
LEVEL_PANEL=""
if [ "$PANELS" = 3 ]; then
  D="$DIR/chart-levels.dat"
  LEVEL_PANEL="set title 'level by level (every ${INTERVAL}-s reading): upper level wide, lower narrow and light, median Mpps'
set linetype 3 lc rgb '#9ecae1'
set linetype 4 lc rgb '#fdd0a2'
plot '$D' using 0:7:(0.6):5:xticlabels(1) with boxes lc variable notitle, \\
     '' using 0:8:(0.3):(\$5 + 2) with boxes lc variable notitle, \\
     '' using 0:7:(\$8 > 0 ? sprintf(\"%.2f / %.2f\", \$7, \$8) : sprintf(\"%.2f (one level)\", \$7)) with labels offset 0,0.8 font \",9\" notitle"
fi
gnuplot <<EOF_GP
set terminal pngcairo size $WIDTH,600 font "DejaVu Sans,11" noenhanced
set output '$PNG'
set multiplot layout 1,$PANELS title "$TITLE\n$(date -u -r "$RUNS" '+%Y-%m-%d %H:%M UTC'), nice $NICE; medians of $ROUNDS rounds; blue iovirt, orange DPDK; in brackets: backend / frontend core % (frontend < 95 %: noise-bound)"
set style fill solid 0.85 border -1
set boxwidth 0.6
set grid ytics
set xtics font ",9"
set linetype 1 lc rgb '#1f77b4'
set linetype 2 lc rgb '#ff7f0e'
set offsets 0.5, 0.5, graph 0.1, 0
set bmargin 6
set title '$([ "$TOPOLOGY" = p2p ] && echo 'frames per second received at the far ends (median Mpps)' || echo 'frames per second (median Mpps)')'
set ylabel 'Mpps'
set yrange [0:*]
plot '$DIR/chart.dat' using 0:2:(0.6):5:xticlabels(1) with boxes lc variable notitle, \
     '' using 0:2:(sprintf("%.2f (%d / %d %%)", \$2, \$4, \$6)) with labels offset 0,0.8 font ",9" notitle
$LEVEL_PANEL
set title 'backend CPU per frame (median ns)'
set ylabel 'ns/frame'
plot '$DIR/chart.dat' using 0:3:(0.6):5:xticlabels(1) with boxes lc variable notitle, \
     '' using 0:3:(sprintf("%d", \$3)) with labels offset 0,0.8 font ",9" notitle
unset multiplot
EOF_GP
echo "bench-net: chart $PNG" >&2
echo "bench-net: raw logs in $DIR" >&2
