#!/usr/bin/env bash
# Side-by-side vhost-user-net benchmark: the iovirt switch's virtio-net port vs DPDK's own vhost PMD, both fed by
# the same frontend, DPDK testpmd with net_virtio_user in txonly mode. Prints a Markdown table on stdout.
#
#   scripts/bench-net.sh [--seconds S] [--warmup S] [--rounds N] [--sizes "64 1500"] [--poll-us "0 1000"]
#                        [--backend-cpu N] [--client-cpu N] [--dir DIR]
#
# Backends, each pinned with taskset to --backend-cpu (one core for everything the backend does):
#   dpdk      dpdk-testpmd --vdev net_vhost0,iface=SOCK, forward mode rxonly (busy-polls, frees every packet)
#   iovirt    iovirt serve net --port vhost-user:SOCK[,poll-us=P]; the frames are switched (learn, look up, flood to
#             no other port): the port's transmit thread, the JIT and the GC all share the one core
# The frontend (txonly, --txpkts SIZE) runs on --client-cpu. After --warmup seconds (the JVM compiles its hot path)
# testpmd's "show port stats" is read twice, --seconds apart: Tx-pps is what the backend took from the ring per
# second (the ring is full all the time: testpmd drops what does not fit). Backends alternate, --rounds times.
# Raw logs stay in DIR (default: a new temporary directory, printed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

MEASURE=10
WARMUP=8
ROUNDS=3
SIZES="64 1500"
POLLS="0 1000"
BACKEND_CPU=0
CLIENT_CPU=1
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) MEASURE="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --sizes) SIZES="$2"; shift 2 ;;
    --poll-us) POLLS="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-net: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

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
    [ -S "$1" ] && return 0
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
    taskset -c "$BACKEND_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$BACKEND_CPU,1@$BACKEND_CPU" --no-huge -m 512 \
      --no-pci --file-prefix="be$$" --vdev "net_vhost0,iface=$sock,queues=1" -- -i --forward-mode=rxonly \
      --total-num-mbufs=16384 < "$fifo" > "$belog" 2>&1 &
    PIDS+=($!)
    exec 8>"$fifo"
    wait_socket "$sock" "$!" "$belog"
    echo start >&8
  else
    IOVIRT_JAVA_OPTS="${BACKEND_JAVA_OPTS:-}" taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve net \
      --port "vhost-user:$sock,poll-us=$poll" > "$belog" 2>&1 &
    PIDS+=($!)
    wait_socket "$sock" "$!" "$belog"
  fi
  local felog="$DIR/$tag-frontend.log"
  { sleep 1; echo start; sleep "$WARMUP"; echo "show port stats 0"; sleep "$MEASURE"; echo "show port stats 0";
    echo stop; sleep 1; echo quit; } \
    | taskset -c "$CLIENT_CPU" stdbuf -oL "$TESTPMD" --lcores="0@$CLIENT_CPU,1@$CLIENT_CPU" --no-huge -m 512 \
        --no-pci --file-prefix="fe$$" --vdev "net_virtio_user0,path=$sock" -- -i --forward-mode=txonly \
        --txpkts="$size" --total-num-mbufs=16384 > "$felog" 2>&1 || true
  if [ "$backend" = dpdk ]; then echo stop >&8; echo quit >&8; exec 8>&-; fi
  cleanup
  local pps
  pps="$(grep -E 'Tx-pps:' "$felog" | tail -1 | awk '{print $2}')"
  [ -n "$pps" ] || { echo "bench-net: no Tx-pps in $felog" >&2; tail -20 "$felog" >&2; exit 1; }
  echo "$pps"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

echo "bench-net: load average before: $(cut -d' ' -f1-3 /proc/loadavg); logs in $DIR" >&2
declare -A RESULTS
for size in $SIZES; do
  for round in $(seq 1 "$ROUNDS"); do
    RESULTS["dpdk-$size"]+=" $(run_case dpdk "$size" 0 "$round")"
    for poll in $POLLS; do
      RESULTS["iovirt-$size-$poll"]+=" $(run_case iovirt "$size" "$poll" "$round")"
    done
  done
done
echo "bench-net: load average after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

echo "| frame | backend (1 core) | Mpps median (runs) | vs DPDK |"
echo "|---|---|---|---|"
for size in $SIZES; do
  d="$(echo "${RESULTS["dpdk-$size"]}" | median)"
  printf '| %s B | DPDK vhost PMD, rxonly | %.2f (%s) | 1.00 |\n' "$size" "$(echo "$d / 1000000" | bc -l)" \
    "$(echo "${RESULTS["dpdk-$size"]}" | awk '{for (i=1;i<=NF;i++) printf "%s%.2f", (i>1?" ":""), $i/1e6}')"
  for poll in $POLLS; do
    v="$(echo "${RESULTS["iovirt-$size-$poll"]}" | median)"
    printf '| %s B | iovirt vhost-user port, poll-us=%s | %.2f (%s) | %.2f |\n' "$size" "$poll" \
      "$(echo "$v / 1000000" | bc -l)" \
      "$(echo "${RESULTS["iovirt-$size-$poll"]}" | awk '{for (i=1;i<=NF;i++) printf "%s%.2f", (i>1?" ":""), $i/1e6}')" \
      "$(echo "$v / $d" | bc -l)"
  done
done
echo "bench-net: raw logs in $DIR" >&2
