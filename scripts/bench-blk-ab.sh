#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Interleaved A/B of vhost-user-blk backends on one case: each round starts each backend in turn on the same image,
# runs one `iovirt bench blk` from the client core against it and stops it, so that a slow phase of the host's disk
# or CPU falls on every backend alike instead of on whichever ran last. One line per run, in run order.
#
#   scripts/bench-blk-ab.sh [--rounds N] [--rw randread|randwrite|...] [--qd N] [--seconds S] [--warmup S]
#                           [--direct] [--image FILE] [--dir DIR] [--backend-cpu N] [--client-cpu N] BACKEND...
#
# BACKEND: a checkout of iovirt (a directory with ./iovirt, e.g. a git worktree of the change and one of main; each
# builds its own target/iovirt.jar), or the word qsd (qemu-storage-daemon; aio=native with --direct, as
# scripts/bench-blk.sh runs it). The client is always this checkout's `iovirt bench blk`.
# Or fio-io_uring / fio-libaio: no backend and no virtio layer, fio itself on the same image from the client core
# (same rw, QD, 4 KiB, --direct=1 when --direct, ramp = warm-up) — what the disk gives one core, interleaved with
# the backends, because fio's own rate moves with the host's disk from one minute to the next (13 % across one
# session, docs/benchmarks.md) and a ratio against a fio run made minutes apart measures that drift too.
# Output per run: backend round IOPS p50-µs p99-µs backend-CPU-µs/IO client-core-% (fio: completion latency, "-"
# for backend CPU, fio's own CPU % for the client's).
# The image (default: DIR/disk.raw, 1 GiB of random data, written once) must be on a file system with O_DIRECT.
# Used for the O_DIRECT submission change of 2026-12-04 (docs/benchmarks.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"

ROUNDS=3 RW=randread QD=32 SECS=10 WARMUP=2 DIRECT=0 IMAGE="" DIR="" BACKEND_CPU=0 CLIENT_CPU=1
BACKENDS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --rw) RW="$2"; shift 2 ;;
    --qd) QD="$2"; shift 2 ;;
    --seconds) SECS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --direct) DIRECT=1; shift ;;
    --image) IMAGE="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    -h|--help) sed -n '3,20p' "$0"; exit 0 ;;
    -*) echo "bench-blk-ab: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) BACKENDS+=("$1"); shift ;;
  esac
done
[ ${#BACKENDS[@]} -gt 0 ] || { echo "bench-blk-ab: name at least one BACKEND (a checkout or qsd); see --help" >&2; exit 2; }
for b in "${BACKENDS[@]}"; do
  case "$b" in qsd|fio-io_uring|fio-libaio) continue ;; esac
  [ -x "$b/iovirt" ] || { echo "bench-blk-ab: $b is neither qsd, fio-io_uring, fio-libaio nor a checkout with ./iovirt" >&2; exit 2; }
done
for tool in qemu-storage-daemon taskset jq fio; do
  command -v "$tool" >/dev/null || "$ROOT/scripts/install-deps.sh" >&2
done
[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-blk-ab.XXXXXX)"
mkdir -p "$DIR"
if [ -z "$IMAGE" ]; then
  IMAGE="$DIR/disk.raw"
  if [ ! -f "$IMAGE" ]; then
    echo "bench-blk-ab: writing a 1024 MiB image at $IMAGE ..." >&2
    dd if=/dev/urandom of="$IMAGE" bs=1M count=1024 iflag=fullblock oflag=direct status=none
  fi
fi
for b in "$ROOT" "${BACKENDS[@]}"; do
  case "$b" in qsd|fio-*) ;; *) "$b/iovirt" --version >/dev/null ;; esac # builds each checkout now, not inside a measurement
done

PID=""
cleanup() { if [ -n "$PID" ]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=""; fi; }
trap cleanup EXIT

start_backend() { # backend
  local sock="$DIR/backend.sock" direct_flag="" qsd_cache="cache.direct=off"
  if [ "$DIRECT" = 1 ]; then direct_flag="--direct"; qsd_cache="cache.direct=on,aio=native"; fi
  rm -f "$sock"
  if [ "$1" = qsd ]; then
    taskset -c "$BACKEND_CPU" qemu-storage-daemon \
      --blockdev "driver=file,node-name=file0,filename=$IMAGE,$qsd_cache" \
      --blockdev driver=raw,node-name=disk0,file=file0 \
      --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$sock,writable=on,num-queues=1" \
      > "$DIR/backend.log" 2>&1 &
  else
    taskset -c "$BACKEND_CPU" "$1/iovirt" serve blk --image "$IMAGE" --socket "$sock" --queues 1 $direct_flag \
      > "$DIR/backend.log" 2>&1 &
  fi
  PID=$!
  for _ in $(seq 1 600); do
    listening "$sock" && return 0
    kill -0 "$PID" 2>/dev/null || { echo "bench-blk-ab: $1 exited before listening:" >&2; cat "$DIR/backend.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-blk-ab: $1 did not listen within 60 s" >&2; exit 1
}

run_fio() { # engine round: one fio run on the image from the client core, printed as a backend's line
  local out="$DIR/fio.json" key="${RW#rand}"
  case "$key" in read|write) ;; *) echo "bench-blk-ab: fio rows need --rw randread or randwrite" >&2; exit 2 ;; esac
  fio --name=bench --filename="$IMAGE" --direct="$DIRECT" --rw="$RW" --bs=4k --iodepth="$QD" --ioengine="$1" \
    --runtime="$SECS" --ramp_time="$WARMUP" --time_based --cpus_allowed="$CLIENT_CPU" \
    --output-format=json --output="$out" > /dev/null
  jq -r --arg b "fio-$1" --arg r "$2" --arg k "$key" '.jobs[0] as $t | $t[$k] as $j | [$b, $r, ($j.iops | floor),
    ($j.clat_ns.percentile["50.000000"] / 1000 | floor), ($j.clat_ns.percentile["99.000000"] / 1000 | floor), "-",
    ($t.usr_cpu + $t.sys_cpu | floor)] | map(tostring) | join(" ")' "$out"
}

echo "# $(date -u '+%F %H:%M UTC'), $RW QD $QD, direct=$DIRECT, ${SECS} s after ${WARMUP} s; load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# backend round IOPS p50-us p99-us backend-cpu-us/io client-core-%"
for r in $(seq 1 "$ROUNDS"); do
  for b in "${BACKENDS[@]}"; do
    if [ "${b#fio-}" != "$b" ]; then
      run_fio "${b#fio-}" "$r"
      continue
    fi
    start_backend "$b"
    out="$DIR/run.json"
    taskset -c "$CLIENT_CPU" "$ROOT/iovirt" bench blk --socket "$DIR/backend.sock" --rw "$RW" --bs 4096 --qd "$QD" \
      --seconds "$SECS" --warmup "$WARMUP" --queues 1 --json > "$out"
    cleanup
    name="$b"; [ "$b" = qsd ] || name="$(basename "$b")"
    jq -r --arg b "$name" --arg r "$r" '[$b, $r, (.iops | floor), (.latency_ns.p50 / 1000 | floor),
      (.latency_ns.p99 / 1000 | floor), ((.backend_cpu_us_per_io * 100 | floor) / 100),
      ((.client_core_percent // (.client_cpu_us_per_io * .iops / 10000)) | floor)] | map(tostring) | join(" ")' "$out"
  done
done
