#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Side-by-side vhost-user-net benchmark: the iovirt switch's virtio-net port vs DPDK's own vhost PMD, both fed by
# the same frontend, DPDK testpmd with net_virtio_user in txonly mode. Prints a Markdown table on stdout.
#
#   scripts/bench-net.sh [--seconds S] [--warmup S] [--rounds N] [--sizes "64 1500"] [--poll-us "0 1000"]
#                        [--backend-cpu N] [--client-cpu N] [--nice N] [--dir DIR] [--charts DIR]
#
# Backends, each pinned with taskset to --backend-cpu (one core for everything the backend does):
#   dpdk      dpdk-testpmd --vdev net_vhost0,iface=SOCK, forward mode rxonly (busy-polls, frees every packet)
#   iovirt    iovirt serve net --port vhost-user:SOCK[,poll-us=P]; the frames are switched (learn, look up, flood to
#             no other port): the port's transmit thread, the JIT and the GC all share the one core
# The frontend (txonly, --txpkts SIZE) runs on --client-cpu. After --warmup seconds (the JVM compiles its hot path)
# testpmd's "show port stats" is read twice, --seconds apart: Tx-pps is what the backend took from the ring per
# second (the ring is full all the time: testpmd drops what does not fit). Backends alternate, --rounds times.
# --nice N (as root, e.g. -10) runs backend and frontend at that priority, for both backends alike, so that other
# work on a shared machine disturbs the measurement less: in a scheduler autogroup of their own at nice N (with
# kernel.sched_autogroup_enabled=1, Debian's default, a process's own nice value only counts within its session).
# Charts (gnuplot, PNG): median Mpps and backend CPU ns/packet per backend and frame size, side by side, written to
# --charts DIR (default docs/ of this repository) as bench-net.png.
# Each run also reports the frontend's core % (its CPU time over the window): txonly busy-polls, so below 95 % other
# work took its core and that run is noise-bound. CPU per frame = backend CPU time over the window / frames taken.
# Raw logs stay in DIR (default: a new temporary directory, printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"

MEASURE=10
WARMUP=8
ROUNDS=3
SIZES="64 1500"
POLLS="0 1000"
BACKEND_CPU=0
CLIENT_CPU=1
NICE=0
DIR=""
CHARTS="$ROOT/docs"
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) MEASURE="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --poll-us) POLLS="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --charts) CHARTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-net: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$NICE" != 0 ] && [ "${BENCH_BOOSTED:-}" != 1 ]; then
  exec setsid env BENCH_BOOSTED=1 bash -c 'echo "$0" > /proc/$$/autogroup && exec "$@"' "$NICE" "$0" "${ARGS[@]}"
fi
command -v gnuplot >/dev/null || "$ROOT/scripts/install-deps.sh" >&2 || {
  echo "bench-net: gnuplot is missing — apt-get install gnuplot-nox" >&2; exit 1; }
TESTPMD="$("$ROOT/scripts/install-dpdk.sh")" || { echo "bench-net: dpdk-testpmd is not available" >&2; exit 1; }
command -v taskset >/dev/null || { echo "bench-net: taskset is missing — apt-get install util-linux" >&2; exit 1; }
"$ROOT/iovirt" --version >/dev/null # builds the project when stale, and checks for JDK 25

[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-net.XXXXXX)"
mkdir -p "$DIR"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

wait_socket() { # socket pid log
  for _ in $(seq 1 600); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench-net: backend exited before listening; its log:" >&2; cat "$3" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-net: backend did not listen on $1 within 60 s" >&2; exit 1
}

# One measurement: prints the frontend's Tx-pps over the measurement window.
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
      --port "vhost-user:$sock,poll-us=$poll" > "$belog" 2>&1 &
    PIDS+=($!)
    wait_socket "$sock" "$!" "$belog"
  fi
  local felog="$DIR/$tag-frontend.log" bepid="${PIDS[-1]}"
  { sleep 1; echo start; sleep "$WARMUP"; echo "show port stats 0"; sleep "$MEASURE"; echo "show port stats 0";
    echo stop; sleep 1; echo quit; } \
    | timeout "$((WARMUP + MEASURE + 60))" nice -n "$NICE" taskset -c "$CLIENT_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$CLIENT_CPU,1@$CLIENT_CPU" --no-huge -m 512 \
        --no-pci --file-prefix="fe$$" --vdev "net_virtio_user0,path=$sock" -- -i --forward-mode=txonly \
        --txpkts="$size" --total-num-mbufs=16384 > "$felog" 2>&1 &
  local fepid=$!
  # the backend's CPU time (all threads) over the same window as testpmd's two statistics readings
  sleep "$((1 + WARMUP))"
  local t0 t1 f0 f1 fepmd
  # the frontend testpmd: timeout's child (nice, taskset and stdbuf exec into it)
  fepmd="$(cat /proc/"$fepid"/task/*/children 2>/dev/null | awk '{print $1; exit}')"
  t0="$(cpu_ticks "$bepid")"; f0="$(cpu_ticks "${fepmd:-0}")"
  sleep "$MEASURE"
  t1="$(cpu_ticks "$bepid")"; f1="$(cpu_ticks "${fepmd:-0}")"
  wait "$fepid" || true
  if [ "$backend" = dpdk ]; then echo stop >&8; echo quit >&8; exec 8>&-; fi
  cleanup
  local pps pkts
  pps="$(grep -E 'Tx-pps:' "$felog" | tail -1 | awk '{print $2}')"
  [ -n "$pps" ] || { echo "bench-net: no Tx-pps in $felog" >&2; tail -20 "$felog" >&2; exit 1; }
  pkts="$(grep -E '^ +TX-packets: [0-9]+ +TX-errors' "$felog" | tail -2 | awk '{print $2}' | paste -sd' ' | awk '{print $2 - $1}')"
  # Mpps, backend CPU ns per packet, backend core % (CPU time / wall time over the window), frontend core %
  awk -v pps="$pps" -v pkts="$pkts" -v ticks="$((t1 - t0))" -v fticks="$((f1 - f0))" -v hz="$(getconf CLK_TCK)" \
    -v s="$MEASURE" 'BEGIN { cpu = ticks / hz; printf "%.3f %.0f %.0f %.0f\n", pps / 1e6, (pkts > 0 ? cpu * 1e9 / pkts : 0),
      100 * cpu / s, 100 * fticks / hz / s }'
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

echo "bench-net: load average before: $(cut -d' ' -f1-3 /proc/loadavg); nice $NICE; logs in $DIR" >&2
RUNS="$DIR/runs.txt"
: > "$RUNS"
: > "$DIR/chart.dat"
for size in $SIZES; do
  for round in $(seq 1 "$ROUNDS"); do
    echo "dpdk $size 0 $round $(run_case dpdk "$size" 0 "$round")" | tee -a "$RUNS" >&2
    for poll in $POLLS; do
      echo "iovirt $size $poll $round $(run_case iovirt "$size" "$poll" "$round")" | tee -a "$RUNS" >&2
    done
  done
done
echo "bench-net: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# every run, then the medians per case and the ratio of medians to DPDK's
echo "| frame | backend (pinned to 1 CPU) | Mpps per run | median Mpps | vs DPDK | backend CPU ns/packet (median) | backend core % (median) | frontend (client) core % per run |"
echo "|---|---|---|---:|---:|---:|---:|---|"
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
    name="DPDK vhost PMD (rxonly)"; [ "$b" = iovirt ] && name="iovirt vhost-user port, poll-us=$p"
    printf '| %s B | %s | %s | %.2f | %.2f | %.0f | %.0f | %s |\n' "$size" "$name" "$runs" "$m" "$(echo "$m / $d" | bc -l)" "$c" "$u" "$fc"
    printf '"%s B\\n%s" %s %s %s %s\n' "$size" "$([ "$b" = iovirt ] && echo "iovirt\\npoll-us=$p" || echo "DPDK\\nvhost PMD")" "$m" "$c" "$u" \
      "$([ "$b" = iovirt ] && echo 1 || echo 2)" >> "$DIR/chart.dat"
  done
done
mkdir -p "$CHARTS"
gnuplot <<EOF_GP
set terminal pngcairo size 1400,600 font "DejaVu Sans,11" noenhanced
set output '$CHARTS/bench-net.png'
set multiplot layout 1,2 title "vhost-user-net: testpmd virtio-user txonly into a backend on one CPU\n$(date -u '+%Y-%m-%d %H:%M UTC'), nice $NICE; medians of $ROUNDS rounds; blue iovirt, orange DPDK; in brackets: backend core %"
set style fill solid 0.85 border -1
set boxwidth 0.6
set grid ytics
set xtics font ",9"
set linetype 1 lc rgb '#1f77b4'
set linetype 2 lc rgb '#ff7f0e'
set offsets 0.5, 0.5, graph 0.1, 0
set bmargin 6
set title 'frames per second (median Mpps)'
set ylabel 'Mpps'
set yrange [0:*]
plot '$DIR/chart.dat' using 0:2:(0.6):5:xticlabels(1) with boxes lc variable notitle, \
     '' using 0:2:(sprintf("%.2f (%d %%)", \$2, \$4)) with labels offset 0,0.8 font ",9" notitle
set title 'backend CPU per frame (median ns)'
set ylabel 'ns/frame'
plot '$DIR/chart.dat' using 0:3:(0.6):5:xticlabels(1) with boxes lc variable notitle, \
     '' using 0:3:(sprintf("%d", \$3)) with labels offset 0,0.8 font ",9" notitle
unset multiplot
EOF_GP
echo "bench-net: chart $CHARTS/bench-net.png" >&2
echo "bench-net: raw logs in $DIR" >&2
