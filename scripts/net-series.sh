#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# One long vhost-user-net run, its rate read every --interval seconds: does a backend's rate stay at one level for a
# whole run, or move between levels within it? bench-net.sh reports one number per run (two readings --seconds
# apart); on this kind of 2-vCPU VM the rates of separate runs fall into two levels, and this script shows when the
# level changes — within a run, while nothing about the backend changes, the host's placement of its vCPUs does (the
# CPU-to-CPU round trip moves between ~80 and ~420 ns over tens of seconds: iovirt bench c2c --samples 2400
# --round-trips 300000 --json, docs/benchmarks.md 2026-12-05 07:50–09:17 section).
#
#   scripts/net-series.sh [--backend iovirt|dpdk] [--topology rxonly|p2p] [--size BYTES] [--interval S] [--count N]
#                         [--poll-us P] [--profile] [--dir DIR]
#
# Topologies and command lines as bench-net.sh (backend on CPU 0, the frontend testpmd on CPU 1): rxonly, testpmd
# txonly into one port, the rate is what the backend took from the ring (testpmd's Tx-pps); p2p, one testpmd
# forwarding between two virtio-user ports through the backend, the rate is what came back on both (Rx-pps summed).
# Prints one line per interval: seconds since the frontend started and Mpps over that interval.
# --profile (iovirt only): perf samples of the backend (cpu-clock, 999 Hz, JIT symbols from -XX:+DumpPerfMapAtExit)
# for the whole run; afterwards the intervals are split at half the fastest interval's rate into slow and fast, and
# for each Java/JVM/kernel symbol its share of the backend's samples and its nanoseconds per frame (share x 1e9 /
# rate, the backend's core being busy all the time) in either group are printed — which stage grows in the slow
# intervals. Needs perf (linux-perf).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
BACKEND=iovirt
TOPOLOGY=p2p
SIZE=64
INTERVAL=2
COUNT=30
POLL=adaptive
PROFILE=0
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) BACKEND="$2"; shift 2 ;;
    --topology) TOPOLOGY="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --interval) INTERVAL="$2"; shift 2 ;;
    --count) COUNT="$2"; shift 2 ;;
    --poll-us) POLL="$2"; shift 2 ;;
    --profile) PROFILE=1; shift ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) awk 'NR > 2 && !/^#/ {exit} NR > 2 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    *) echo "net-series: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BACKEND" in iovirt|dpdk) ;; *) echo "net-series: --backend must be iovirt or dpdk" >&2; exit 2 ;; esac
case "$TOPOLOGY" in rxonly|p2p) ;; *) echo "net-series: --topology must be rxonly or p2p" >&2; exit 2 ;; esac
if [ "$PROFILE" = 1 ]; then
  [ "$BACKEND" = iovirt ] || { echo "net-series: --profile is for --backend iovirt" >&2; exit 2; }
  command -v perf >/dev/null || { echo "net-series: perf is missing — apt-get install linux-perf" >&2; exit 1; }
fi
TESTPMD="$("$ROOT/scripts/install-dpdk.sh")" || { echo "net-series: dpdk-testpmd is not available" >&2; exit 1; }
"$ROOT/iovirt" --version >/dev/null # builds the project when stale, and checks for JDK 25
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-net-series.XXXXXX)"
mkdir -p "$DIR"
sa="$DIR/a.sock" sb="$DIR/b.sock" mac_a=02:00:00:00:00:0a mac_b=02:00:00:00:00:0b
rm -f "$sa" "$sb"
. "$ROOT/scripts/lib/children.sh"
cleanup() {
  exec 8>&- 2>/dev/null || true
  stop_children
}

if [ "$BACKEND" = dpdk ]; then
  vdevs=(--vdev "net_vhost0,iface=$sa,queues=1")
  [ "$TOPOLOGY" = p2p ] && vdevs+=(--vdev "net_vhost1,iface=$sb,queues=1")
  mode=io
  [ "$TOPOLOGY" = rxonly ] && mode=rxonly
  rm -f "$DIR/be.in"; mkfifo "$DIR/be.in"
  taskset -c 0 stdbuf -oL "$TESTPMD" --lcores="0@0,1@0" --no-huge -m 512 --no-pci --file-prefix="nsb$$" "${vdevs[@]}" \
    -- -i --forward-mode="$mode" --total-num-mbufs=16384 < "$DIR/be.in" > "$DIR/backend.log" 2>&1 &
  PIDS+=($!)
  exec 8>"$DIR/be.in"
else
  ports=(--port "vhost-user:$sa,poll-us=$POLL")
  [ "$TOPOLOGY" = p2p ] && ports+=(--port "vhost-user:$sb,poll-us=$POLL")
  jopts=""
  [ "$PROFILE" = 1 ] && jopts="-XX:+UnlockDiagnosticVMOptions -XX:+DumpPerfMapAtExit"
  IOVIRT_JAVA_OPTS="$jopts" taskset -c 0 "$ROOT/iovirt" serve net "${ports[@]}" > "$DIR/backend.log" 2>&1 &
  PIDS+=($!)
fi
BP="${PIDS[-1]}"
for s in "$sa" $([ "$TOPOLOGY" = p2p ] && echo "$sb"); do
  for _ in $(seq 600); do listening "$s" && break; kill -0 "$BP" 2>/dev/null || break; sleep 0.1; done
  listening "$s" || { echo "net-series: the backend did not listen on $s; its log:" >&2; cat "$DIR/backend.log" >&2; exit 1; }
done

if [ "$TOPOLOGY" = p2p ]; then
  fe=(--vdev "net_virtio_user0,path=$sa,mac=$mac_a" --vdev "net_virtio_user1,path=$sb,mac=$mac_b" -- -i
      --forward-mode=io --eth-peer="0,$mac_b" --eth-peer="1,$mac_a")
  # 8 bursts in two steps, as bench-net.sh: all at once, a backend asleep when they come loses 64 frames a port
  start() { echo "start tx_first 4"; sleep 1; echo stop; echo "start tx_first 4"; }
  LEAD=1 # seconds the traffic starts later than with rxonly
else
  fe=(--vdev "net_virtio_user0,path=$sa" -- -i --forward-mode=txonly)
  start() { echo start; }
  LEAD=0
fi
# DPDK's backend starts forwarding once its frontend has connected (as in bench-net.sh)
{ sleep 1; [ "$BACKEND" = dpdk ] && echo start >&8; start
  for _ in $(seq "$COUNT"); do sleep "$INTERVAL"; echo "show port stats all"; done
  echo stop; sleep 1; echo quit; } |
  timeout $((COUNT * INTERVAL + LEAD + 60)) taskset -c 1 stdbuf -oL "$TESTPMD" --lcores="0@1,1@1" --no-huge -m 512 --no-pci \
    --file-prefix="nsf$$" "${fe[@]}" --txpkts="$SIZE" --total-num-mbufs=16384 > "$DIR/frontend.log" 2>&1 &
FP=$!
if [ "$PROFILE" = 1 ]; then
  # from the frontend's start on (the first interval's reading is 1 s later: testpmd starts after "sleep 1")
  perf record -e cpu-clock -F 999 -p "$BP" -o "$DIR/perf.data" -- sleep $((COUNT * INTERVAL + 1 + LEAD)) > "$DIR/perf.log" 2>&1 || true
fi
wait "$FP" || true
if [ "$BACKEND" = dpdk ]; then echo quit >&8; sleep 1; fi
cleanup

# testpmd's first "show port stats" has no previous reading: its pps is 0 and is left out
if [ "$TOPOLOGY" = p2p ]; then
  grep -E 'Rx-pps' "$DIR/frontend.log" | awk '{print $2}' | paste - - | awk '{print ($1 + $2) / 1e6}'
else
  grep -E 'Tx-pps' "$DIR/frontend.log" | awk '{print $2 / 1e6}'
fi | tail -n +2 > "$DIR/series.txt"
echo "$BACKEND, $TOPOLOGY, $SIZE-byte frames, every $INTERVAL s ($(date -u '+%Y-%m-%d %H:%M UTC'), logs in $DIR):"
awk -v i="$INTERVAL" -v l="$LEAD" '{printf "  %4d s  %7.3f Mpps\n", 1 + l + (NR + 1) * i, $1}' "$DIR/series.txt"
[ -s "$DIR/series.txt" ] || { echo "net-series: no rate readings in $DIR/frontend.log" >&2; exit 1; }

if [ "$PROFILE" = 1 ]; then
  # sample times from the first sample (the frontend connecting, ~0.2 s after it started): interval j of the series
  # is testpmd reading j+2 (the first was dropped above), taken 1 + LEAD + (j+2)*INTERVAL s after the frontend started
  perf script -i "$DIR/perf.data" -F time,ip,sym 2>/dev/null |
    awk -v i="$INTERVAL" -v l="$LEAD" 'NR == 1 {t0 = $1 + 0} {t = $1 + 0 - t0; $1 = ""; $2 = ""; sub(/^ +/, ""); print int((t - 1 - l) / i) - 1 "\t" $0}' \
    > "$DIR/samples.txt"
  awk -F'\t' -v rates="$DIR/series.txt" '
    BEGIN { while ((getline r < rates) > 0) { rate[n++] = r; if (r > max) max = r } }
    $1 >= 0 && $1 < n { k = $1; g = rate[k] < max / 2 ? "slow" : "fast"; s[g, $2]++; tot[g]++; seen[$2] = 1
                        if (!(k in counted)) { counted[k] = 1; mpps[g] += rate[k]; cnt[g]++ } }
    END {
      for (g in cnt) m[g] = mpps[g] / cnt[g]
      printf "1001\t  %-64s %14s %14s\n", "backend samples by symbol (intervals under half the fastest: slow)", "fast", "slow"
      printf "1000\t  %-64s %3d at %5.2f %3d at %5.2f\n", "intervals, mean Mpps", cnt["fast"], m["fast"], cnt["slow"], m["slow"]
      for (x in seen) {
        f = tot["fast"] ? s["fast", x] / tot["fast"] : 0; w = tot["slow"] ? s["slow", x] / tot["slow"] : 0
        if (f < 0.01 && w < 0.01) continue
        printf "%.4f\t  %-64s %5.1f%% %4.0fns %5.1f%% %4.0fns\n", f + w, substr(x, 1, 64), 100 * f,
               m["fast"] ? f * 1e3 / m["fast"] : 0, 100 * w, m["slow"] ? w * 1e3 / m["slow"] : 0
      }
    }' "$DIR/samples.txt" | sort -t$'\t' -k1,1 -rn | cut -f2-
fi
