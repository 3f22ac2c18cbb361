#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds target/iovirt.aot, the JDK 25 AOT cache (JEP 483/514/515: classes loaded and linked ahead of time, method
# profiles) that the launcher gives backends (`serve`, `vm`) when it is newer than target/iovirt.jar. The training
# run is a real one: `iovirt serve blk` on a scratch image, driven for a few seconds by `iovirt bench blk` (random
# reads and writes), then SIGTERM; the JVM writes the cache as it exits. ~10-20 s; the launcher calls it after
# each build. Measured effect and why: docs/benchmarks.md, "Footprint".
#   scripts/build-aot-cache.sh JAVA [JVM OPTIONS...]   (the launcher passes its java and the backend options)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
JAVA="$1"; shift
JAR="$ROOT/target/iovirt.jar"
OUT="$ROOT/target/iovirt.aot"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/iovirt-aot.XXXXXX")"
BE=""
trap '[ -n "$BE" ] && kill "$BE" 2>/dev/null; rm -rf "$TMP"' EXIT
truncate -s 64M "$TMP/disk.raw"
rm -f "$OUT"
"$JAVA" "$@" -XX:AOTCacheOutput="$TMP/iovirt.aot" -jar "$JAR" serve blk --image "$TMP/disk.raw" \
  --socket "$TMP/blk.sock" > "$TMP/serve.log" 2>&1 &
BE=$!
for _ in $(seq 1 600); do listening "$TMP/blk.sock" && break; kill -0 "$BE" 2>/dev/null || break; sleep 0.1; done
if listening "$TMP/blk.sock"; then
  for rw in randread randwrite; do
    "$JAVA" "$@" -jar "$JAR" bench blk --socket "$TMP/blk.sock" --rw "$rw" --qd 8 --seconds 1 --warmup 0.5 \
      > "$TMP/bench-$rw.log" 2>&1 || true
  done
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
