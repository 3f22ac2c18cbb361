#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Side-by-side storage benchmark on one qcow2 image, one run per case, printed as Markdown on stdout:
#   1. NBD: `qemu-img bench` (4 KiB, QD 1 and 32, read and write) through `iovirt serve nbd` vs `qemu-nbd`;
#   2. vhost-user-blk: `iovirt bench blk` (4 KiB random, QD 1 and 32) against `iovirt serve blk` vs
#      qemu-storage-daemon, both serving the same qcow2 image (buffered, one queue).
#
#   scripts/bench-storage.sh [--size MIB] [--count N] [--seconds S] [--rounds R] [--dir DIR] [--backend-cpu N]
#                            [--client-cpu N]
#
# --rounds R (default 3) runs every case R times, the two servers taking turns (iovirt first in odd rounds, the C
# server first in even ones), and reports the median of the rounds: both servers' QD 1 rates drift on a shared
# host by more than the difference between them, and interleaving puts the drift on both sides alike.
# The image is fully allocated (qemu-img convert of random data), so reads and writes hit allocated clusters,
# and it is in the page cache for both servers alike. The servers run one at a time on the same file, pinned to
# --backend-cpu; clients to --client-cpu. Client CPU share = the client's user+system time over its wall time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
SIZE_MIB=256
COUNT=40000
SECS=5
ROUNDS=3
DIR=""
BACKEND_CPU=0
CLIENT_CPU=1
while [ $# -gt 0 ]; do
  case "$1" in
    --size) SIZE_MIB="$2"; shift 2 ;;
    --count) COUNT="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --rounds) ROUNDS="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-storage: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for tool in qemu-img qemu-nbd qemu-storage-daemon taskset jq /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench-storage: '$tool' is missing — apt-get install qemu-utils qemu-system-x86 util-linux jq time" >&2; exit 1; }
done
"$ROOT/iovirt" --version >/dev/null
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-storage.XXXXXX)"
mkdir -p "$DIR"
IMG="$DIR/disk.qcow2"
. "$ROOT/scripts/lib/children.sh"
if [ ! -f "$IMG" ]; then
  echo "bench-storage: writing a fully allocated ${SIZE_MIB} MiB qcow2 image at $IMG ..." >&2
  dd if=/dev/urandom of="$DIR/src.raw" bs=1M count="$SIZE_MIB" iflag=fullblock status=none
  qemu-img convert -f raw -O qcow2 "$DIR/src.raw" "$IMG"
  rm -f "$DIR/src.raw"
fi
cat "$IMG" > /dev/null

wait_socket() { # socket pid name
  for _ in $(seq 1 600); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench-storage: $3 exited before listening:" >&2; cat "$DIR/$3.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-storage: $3 did not listen on $1" >&2; exit 1
}

# ---- 1. NBD ----------------------------------------------------------------------------------------------------
nbd_case() { # server rw qd -> "iops share%"
  local flags="" uri="nbd+unix:///bench?socket=$DIR/nbd.sock"
  [ "$2" = write ] && flags="-w"
  local out
  out=$( { taskset -c "$CLIENT_CPU" /usr/bin/time -f 'TIME %e %U %S' qemu-img bench -f raw -c "$COUNT" -d "$3" -s 4096 \
            -S 4096 $flags "$uri"; } 2>&1 )
  local secs; secs=$(echo "$out" | sed -n 's/.*Run completed in \([0-9.]*\) seconds.*/\1/p')
  local t; t=$(echo "$out" | grep '^TIME')
  local wall user sys; read -r _ wall user sys <<< "$t"
  [ -n "$secs" ] || { echo "bench-storage: qemu-img bench failed: $out" >&2; exit 1; }
  echo "$(jq -n "$COUNT / $secs | round") $(jq -n "($user + $sys) / $wall * 100 | round")"
}
start_nbd() { # iovirt|qemu-nbd
  rm -f "$DIR/nbd.sock"
  if [ "$1" = iovirt ]; then
    taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve nbd --image "$IMG" --socket "$DIR/nbd.sock" --name bench > "$DIR/iovirt-nbd.log" 2>&1 &
  else
    taskset -c "$BACKEND_CPU" qemu-nbd -t -f qcow2 --cache=writeback -k "$DIR/nbd.sock" -x bench --shared=4 "$IMG" > "$DIR/qemu-nbd.log" 2>&1 &
  fi
  PIDS+=($!)
  wait_socket "$DIR/nbd.sock" "$!" "$([ "$1" = iovirt ] && echo iovirt-nbd || echo qemu-nbd)"
}
declare -A R  # "server rw qd" -> "iops share% iops share% ..." (one pair per round)
order() { # round first second -> the two in this round's order
  if [ $(( $1 % 2 )) -eq 1 ]; then echo "$2 $3"; else echo "$3 $2"; fi
}
for round in $(seq 1 "$ROUNDS"); do
  for srv in $(order "$round" iovirt qemu-nbd); do
    start_nbd "$srv"
    # warm-up (JIT); retried while the socket exists but is not listening yet (bind and listen are two steps)
    for _ in $(seq 1 100); do
      qemu-img bench -f raw -c 5000 -d 8 -s 4096 "nbd+unix:///bench?socket=$DIR/nbd.sock" > /dev/null 2>&1 && break
      sleep 0.2
    done
    for rw in read write; do
      for qd in 1 32; do
        echo "bench-storage: round $round nbd $srv $rw QD $qd ..." >&2
        R["$srv $rw $qd"]+="$(nbd_case "$srv" "$rw" "$qd") "
      done
    done
    cleanup
  done
done
# median of the odd-numbered fields (rates) / of the even ones (client CPU %) of a round list
median_of() { # "a1 b1 a2 b2 ..." 1|2
  echo "$1" | tr ' ' '\n' | sed '/^$/d' | awk -v f="$2" 'NR % 2 == f % 2' | sort -n \
    | awk '{v[NR]=$1} END {if (NR % 2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# ---- 2. vhost-user-blk -----------------------------------------------------------------------------------------
blk_case() { # backend rw qd
  taskset -c "$CLIENT_CPU" "$ROOT/iovirt" bench blk --socket "$DIR/$1.sock" --rw "$2" --bs 4096 --qd "$3" \
    --seconds "$SECS" --warmup 2 --queues 1 --json > "$DIR/blk-$1-$2-qd$3.json"
}
blk_round() { # round backend
  rm -f "$DIR/$2.sock"
  if [ "$2" = iovirt ]; then
    taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve blk --image "$IMG" --socket "$DIR/iovirt.sock" --queues 1 > "$DIR/iovirt-blk.log" 2>&1 &
  else
    taskset -c "$BACKEND_CPU" qemu-storage-daemon \
      --blockdev "driver=file,node-name=file0,filename=$IMG,cache.direct=off" \
      --blockdev driver=qcow2,node-name=disk0,file=file0 \
      --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$DIR/qsd.sock,writable=on,num-queues=1" \
      > "$DIR/qsd.log" 2>&1 &
  fi
  PIDS+=($!)
  wait_socket "$DIR/$2.sock" "$!" "$([ "$2" = iovirt ] && echo iovirt-blk || echo qsd)"
  for rw in randread randwrite; do
    for qd in 1 32; do
      echo "bench-storage: round $1 blk $2 $rw QD $qd ..." >&2
      blk_case "$2" "$rw" "$qd"
      cp "$DIR/blk-$2-$rw-qd$qd.json" "$DIR/blk-$2-$rw-qd$qd.r$1.json"
    done
  done
  cleanup
}
for round in $(seq 1 "$ROUNDS"); do
  for be in $(order "$round" iovirt qsd); do
    blk_round "$round" "$be"
  done
done
# the round whose IOPS is the median stands for the case (its latency and CPU columns come from the same run)
for be in iovirt qsd; do
  for rw in randread randwrite; do
    for qd in 1 32; do
      med=$(for f in "$DIR"/blk-$be-$rw-qd$qd.r*.json; do echo "$(jq .iops "$f") $f"; done | sort -n \
        | awk '{f[NR]=$2} END {print f[int((NR+1)/2)]}')
      cp "$med" "$DIR/blk-$be-$rw-qd$qd.json"
    done
  done
done

# ---- report ----------------------------------------------------------------------------------------------------
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'); machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r), $(qemu-img --version | head -1)"
echo "Command: scripts/bench-storage.sh --size $SIZE_MIB --count $COUNT --seconds $SECS --rounds $ROUNDS --backend-cpu $BACKEND_CPU --client-cpu $CLIENT_CPU"
echo "Image: ${SIZE_MIB} MiB qcow2, 64 KiB clusters, fully allocated, in the page cache. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "NBD, \`qemu-img bench -f raw -c $COUNT -d QD -s 4096 -S 4096 [-w] nbd+unix:///bench?socket=...\` (one connection):"
echo
echo "| rw | QD | iovirt serve nbd IOPS (median of $ROUNDS) | qemu-nbd IOPS (median of $ROUNDS) | ratio | iovirt per round | qemu-nbd per round | client CPU % median (iovirt / qemu-nbd run) |"
echo "|---|---:|---:|---:|---:|---|---|---:|"
rates() { echo "$1" | awk '{s=""; for (i = 1; i <= NF; i += 2) s = s (s == "" ? "" : " ") $i; print s}'; }
for rw in read write; do
  for qd in 1 32; do
    ra="${R["iovirt $rw $qd"]}"; rb="${R["qemu-nbd $rw $qd"]}"
    a=$(median_of "$ra" 1); b=$(median_of "$rb" 1)
    printf '| %s | %s | %.0f | %.0f | %.2f | %s | %s | %s / %s |\n' "$rw" "$qd" "$a" "$b" "$(jq -n "$a / $b")" \
      "$(rates "$ra")" "$(rates "$rb")" "$(median_of "$ra" 2)" "$(median_of "$rb" 2)"
  done
done
echo
echo "vhost-user-blk on the same qcow2, \`iovirt bench blk --bs 4096 --queues 1 --seconds $SECS\` (busy-polling client; per case the round with the median IOPS of $ROUNDS):"
echo
echo "| rw | QD | iovirt IOPS | qsd IOPS | ratio | iovirt p50 µs | qsd p50 µs | iovirt CPU µs/IO | qsd CPU µs/IO | client core % |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
q() { jq -r "$2" "$1"; }
SHARE='(.client_core_percent // (.client_cpu_us_per_io * .iops / 1e4)) | round'
for rw in randread randwrite; do
  for qd in 1 32; do
    a="$DIR/blk-iovirt-$rw-qd$qd.json"; b="$DIR/blk-qsd-$rw-qd$qd.json"
    printf '| %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f | %s | %s | %s / %s |\n' "$rw" "$qd" "$(q "$a" .iops)" "$(q "$b" .iops)" \
      "$(jq -n "$(q "$a" .iops) / $(q "$b" .iops)")" "$(q "$a" '.latency_ns.p50 / 1000')" "$(q "$b" '.latency_ns.p50 / 1000')" \
      "$(q "$a" 'if .backend_cpu_us_per_io == null then "n/a" else (.backend_cpu_us_per_io * 10 | round / 10 | tostring) end')" \
      "$(q "$b" 'if .backend_cpu_us_per_io == null then "n/a" else (.backend_cpu_us_per_io * 10 | round / 10 | tostring) end')" \
      "$(q "$a" "$SHARE")" "$(q "$b" "$SHARE")"
  done
done
echo
echo "Raw results: $DIR" >&2
