#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds target/iovirt.aot, the JDK 25 AOT cache (JEP 483/514/515: classes loaded and linked ahead of time, method
# profiles) that the launcher gives backends (`serve`, `vm`) when it is newer than target/iovirt.jar. The training
# run is the per-VM backend itself — `iovirt vm run NAME --disk pv:IMAGE --nic pv --serve`, one virtio-blk device and
# the switch with one virtio-net port — driven by real frontends for a few seconds: `iovirt bench blk` (random reads
# and writes) and, when dpdk-testpmd is installed (scripts/install-dpdk.sh; not installed from here), testpmd
# sending frames into the port; then SIGTERM, and the JVM writes the cache as it exits. The cache holds what that
# backend loads, so a backend loads (almost) no class from the jar; training on `serve blk` alone left the net
# path's classes out and gave 1-3 MiB more RSS (docs/benchmarks.md, "Footprint"). ~20-30 s; the launcher calls it
# after each build.
#   scripts/build-aot-cache.sh JAVA [JVM OPTIONS...]   (the launcher passes its java and the backend options)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
JAVA="$1"; shift
JAR="$ROOT/target/iovirt.jar"
OUT="$ROOT/target/iovirt.aot"
TESTPMD="${IOVIRT_CACHE:-$HOME/.cache/iovirt}/dpdk/usr/bin/dpdk-testpmd"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/iovirt-aot.XXXXXX")"
BE=""
trap '[ -n "$BE" ] && kill "$BE" 2>/dev/null; rm -rf "$TMP"' EXIT
truncate -s 64M "$TMP/disk.raw"
mkdir -p "$TMP/run" "$TMP/state"
rm -f "$OUT"
"$JAVA" "$@" -XX:AOTCacheOutput="$TMP/iovirt.aot" -Djava.io.tmpdir="$TMP/run" -jar "$JAR" vm run aot \
  --disk "pv:$TMP/disk.raw" --nic pv --serve --state-dir "$TMP/state" > "$TMP/serve.log" 2>&1 &
BE=$!
RUN=""
for _ in $(seq 1 600); do
  RUN="$(find "$TMP/run" -maxdepth 1 -name 'iovirt-vm-aot-*' -print -quit)"
  [ -n "$RUN" ] && listening "$RUN/disk0.sock" && listening "$RUN/nic0.sock" && break
  kill -0 "$BE" 2>/dev/null || break
  sleep 0.1
done
if [ -n "$RUN" ] && listening "$RUN/disk0.sock" && listening "$RUN/nic0.sock"; then
  if [ -x "$TESTPMD" ] && ! ldd "$TESTPMD" | grep -q 'not found'; then
    # non-interactive testpmd forwards until it reads a line from stdin
    (sleep 4; echo) | timeout 60 "$TESTPMD" --no-huge -m 512 --no-pci --file-prefix="aot$$" \
      --vdev "net_virtio_user0,path=$RUN/nic0.sock" -- --forward-mode=txonly --txpkts=64 --total-num-mbufs=16384 \
      > "$TMP/testpmd.log" 2>&1 &
    NET=$!
  fi
  for rw in randread randwrite; do
    "$JAVA" "$@" -jar "$JAR" bench blk --socket "$RUN/disk0.sock" --rw "$rw" --qd 8 --seconds 1 --warmup 0.5 \
      > "$TMP/bench-$rw.log" 2>&1 || true
  done
  [ -n "${NET:-}" ] && { wait "$NET" || true; }
fi
kill -TERM "$BE" 2>/dev/null || true
wait "$BE" 2>/dev/null || true
BE=""
if [ -s "$TMP/iovirt.aot" ]; then
  mv "$TMP/iovirt.aot" "$OUT"
else
  echo "iovirt: could not build the AOT cache (backends start without it); training log:" >&2
  tail -5 "$TMP/serve.log" >&2
  exit 1
fi
