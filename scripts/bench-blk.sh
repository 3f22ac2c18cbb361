#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Side-by-side vhost-user-blk benchmark: `iovirt serve blk` vs qemu-storage-daemon on the same image file, both
# driven by the same client (`iovirt bench blk`), one run per case, printed as a Markdown table on stdout.
#
#   scripts/bench-blk.sh [--seconds S] [--warmup S] [--size BYTES] [--dir DIR] [--backend-cpu N] [--client-cpu N]
#                        [--charts DIR] [--report-only] [--boost N] [--fio]
#
# Cases: {buffered, O_DIRECT} x {randread, randwrite} x {QD 1, QD 32}, 4 KiB, one queue, split ring, polling client.
# Each backend gets one queue / one thread of work (iovirt: --queues 1; qsd: its main loop, no iothread) and is
# pinned with taskset to --backend-cpu; the client to --client-cpu. Per mode, iovirt runs its cases, then qsd: never
# both at once (both lock the image, as a VM's disk is locked).
# Env: BACKEND_JAVA_OPTS is passed to the iovirt backend JVM (e.g. a JFR recording), CLIENT_JAVA_OPTS to the client.
# Raw JSON results stay in DIR (default: a new temporary directory, printed at the end).
# Charts (gnuplot, PNG): IOPS of both backends side by side per case, and latency percentile curves, written to
# --charts DIR (default docs/ of this repository) as bench-blk-iops.png and bench-blk-latency.png.
# --fio: also run fio (io_uring and libaio, --direct=1, pinned to --client-cpu) on the same image after the O_DIRECT
# cases, randread and randwrite at QD 1 and 32, and print a second table: the backends against fio on the same file
# (what the device itself gives without any virtio layer).
# --report-only (with --dir): print the report and draw the charts from the JSON results already in DIR.
# --boost N (root; e.g. -15): run everything in a scheduler autogroup of its own at nice N. With
# kernel.sched_autogroup_enabled=1 (Debian's default) a process's nice value only counts within its session, so on
# a machine shared with other sessions this is what gives client and backends their cores; it is in the report.
# On a QUIET machine do not use it: the kernel's I/O completion work (kworkers, softirqs) stays at nice 0 outside the
# autogroup and waits behind the boosted busy-polling client — O_DIRECT randwrite fell from 12k to 3k IOPS at QD 1 for
# both backends (docs/benchmarks.md, 15:28 run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"

SECONDS_PER_RUN=10
WARMUP=2
SIZE=$((1 << 30))
DIR=""
BACKEND_CPU=0
CLIENT_CPU=1
CHARTS="$ROOT/docs"
REPORT_ONLY=0
BOOST=0
FIO=0
ARGS=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --backend-cpu) BACKEND_CPU="$2"; shift 2 ;;
    --client-cpu) CLIENT_CPU="$2"; shift 2 ;;
    --charts) CHARTS="$2"; shift 2 ;;
    --report-only) REPORT_ONLY=1; shift ;;
    --boost) BOOST="$2"; shift 2 ;;
    --fio) FIO=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-blk: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

if [ "$BOOST" != 0 ] && [ "$REPORT_ONLY" = 0 ] && [ "${BENCH_BOOSTED:-}" != 1 ]; then
  exec setsid env BENCH_BOOSTED=1 bash -c 'echo "$0" > /proc/$$/autogroup && exec "$@"' "$BOOST" "$0" "${ARGS[@]}"
fi
for tool in qemu-storage-daemon taskset jq gnuplot fio; do
  command -v "$tool" >/dev/null || "$ROOT/scripts/install-deps.sh" >&2 || {
    echo "bench-blk: '$tool' is missing — apt-get install qemu-system-x86 util-linux jq gnuplot-nox fio" >&2; exit 1; }
done
[ "$REPORT_ONLY" = 0 ] || [ -n "$DIR" ] || { echo "bench-blk: --report-only needs --dir DIR" >&2; exit 2; }
[ "$REPORT_ONLY" = 1 ] || "$ROOT/iovirt" --version >/dev/null # builds the project when stale, and checks for JDK 25

[ -n "$DIR" ] || DIR="$(mktemp -d /var/tmp/iovirt-bench-blk.XXXXXX)"
mkdir -p "$DIR"
IMAGE="$DIR/disk.raw"
. "$ROOT/scripts/lib/children.sh"

# O_DIRECT needs a file system that supports it (not tmpfs), and reads must hit written blocks, not holes.
if [ "$REPORT_ONLY" = 0 ] && { [ ! -f "$IMAGE" ] || [ "$(stat -c %s "$IMAGE")" != "$SIZE" ]; }; then
  echo "bench-blk: writing a $((SIZE >> 20)) MiB image at $IMAGE ..." >&2
  rm -f "$IMAGE"
  dd if=/dev/urandom of="$IMAGE" bs=1M count=$((SIZE >> 20)) iflag=fullblock oflag=direct status=none
  sync "$IMAGE"
fi
[ "$REPORT_ONLY" = 1 ] || cat "$IMAGE" > /dev/null # the buffered cases start with the image in the page cache, for both backends alike

wait_socket() { # socket pid name
  for _ in $(seq 1 600); do
    listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { echo "bench-blk: $3 exited before listening; its log:" >&2; cat "$DIR/$3.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "bench-blk: $3 did not listen on $1 within 60 s" >&2; exit 1
}

# One backend at a time: both lock the image as a VM's disk (iovirt refuses requests on an image another process
# holds, as QEMU does).
start_backend() { # backend mode: buffered|direct
  local be="$1" mode="$2" direct_flag="" qsd_cache="cache.direct=off"
  if [ "$mode" = direct ]; then direct_flag="--direct"; qsd_cache="cache.direct=on,aio=native"; fi
  rm -f "$DIR/$be.sock"
  if [ "$be" = iovirt ]; then
    IOVIRT_JAVA_OPTS="${BACKEND_JAVA_OPTS:-}" taskset -c "$BACKEND_CPU" "$ROOT/iovirt" serve blk --image "$IMAGE" \
      --socket "$DIR/iovirt.sock" --queues 1 $direct_flag >> "$DIR/iovirt-$mode.log" 2>&1 &
  else
    taskset -c "$BACKEND_CPU" qemu-storage-daemon \
      --blockdev "driver=file,node-name=file0,filename=$IMAGE,$qsd_cache" \
      --blockdev driver=raw,node-name=disk0,file=file0 \
      --export "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=$DIR/qsd.sock,writable=on,num-queues=1" \
      >> "$DIR/qsd-$mode.log" 2>&1 &
  fi
  PIDS+=($!)
  wait_socket "$DIR/$be.sock" "$!" "$be-$mode"
}

run_case() { # backend mode rw qd
  local out="$DIR/$1-$2-$3-qd$4.json"
  echo "bench-blk: $1 $2 $3 QD $4 ..." >&2
  IOVIRT_JAVA_OPTS="${CLIENT_JAVA_OPTS:-}" taskset -c "$CLIENT_CPU" "$ROOT/iovirt" bench blk --socket "$DIR/$1.sock" \
    --rw "$3" --bs 4096 --qd "$4" --seconds "$SECONDS_PER_RUN" --warmup "$WARMUP" --queues 1 --json > "$out"
}

CASES=()
# Per mode: iovirt serves its four cases, then qsd its four — one backend process per mode, warm across its cases
# (a JVM restarted per case would run the slow O_DIRECT cases partly before its JIT has compiled the path).
[ "$REPORT_ONLY" = 1 ] || for mode in buffered direct; do
  for be in iovirt qsd; do
    start_backend "$be" "$mode"
    for rw in randread randwrite; do
      for qd in 1 32; do
        run_case "$be" "$mode" "$rw" "$qd"
      done
    done
    cleanup
  done
  for rw in randread randwrite; do for qd in 1 32; do CASES+=("$mode $rw $qd"); done; done
done
# fio on the same file, right after the backends' O_DIRECT cases (same page-cache state: none, O_DIRECT).
run_fio() { # engine rw qd
  local out="$DIR/fio-$1-$2-qd$3.json"
  echo "bench-blk: fio $1 $2 QD $3 ..." >&2
  fio --name=bench --filename="$IMAGE" --direct=1 --rw="$2" --bs=4k --iodepth="$3" --ioengine="$1" \
    --runtime="$SECONDS_PER_RUN" --ramp_time="$WARMUP" --time_based --cpus_allowed="$CLIENT_CPU" \
    --output-format=json --output="$out" > /dev/null
}
if [ "$REPORT_ONLY" = 0 ] && [ "$FIO" = 1 ]; then
  for rw in randread randwrite; do for qd in 1 32; do for engine in io_uring libaio; do
    run_fio "$engine" "$rw" "$qd"
  done; done; done
fi

[ "$REPORT_ONLY" = 0 ] || for mode in buffered direct; do for rw in randread randwrite; do for qd in 1 32; do
  CASES+=("$mode $rw $qd"); done; done; done

# ---- report ----------------------------------------------------------------------------------------------------
q() { jq -r "$2" "$1"; }
SHARE='(.client_core_percent // (.client_cpu_us_per_io * .iops / 1e4)) | round' # the queue thread's share of its core (older JSON: the client process's)
JAVA_VERSION="unknown JDK"
for jdk in "${JAVA_HOME:-}" /usr/lib/jvm/*25*; do # the launcher's search order
  if [ -n "$jdk" ] && [ -x "$jdk/bin/java" ] && "$jdk/bin/java" -version 2>&1 | grep -qE 'version "25'; then
    JAVA_VERSION="$("$jdk/bin/java" -version 2>&1 | sed -n 3p)"; break
  fi
done
echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "Machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), kernel $(uname -r),"\
     "$(qemu-storage-daemon --version | head -1), $JAVA_VERSION"
echo "Command: scripts/bench-blk.sh --seconds $SECONDS_PER_RUN --warmup $WARMUP --size $SIZE --backend-cpu $BACKEND_CPU --client-cpu $CLIENT_CPU --boost $BOOST$([ "$FIO" = 1 ] && echo " --fio")"
echo "Load average before the report: $(cut -d' ' -f1-3 /proc/loadavg); scheduler boost (autogroup nice): $BOOST"
echo
echo "| mode | rw | QD | iovirt IOPS | qsd IOPS | IOPS ratio | iovirt p50 µs | qsd p50 µs | iovirt p99 µs | qsd p99 µs | iovirt CPU µs/IO | qsd CPU µs/IO | client core % |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in "${CASES[@]}"; do
  set -- $c
  a="$DIR/iovirt-$1-$2-qd$3.json"
  b="$DIR/qsd-$1-$2-qd$3.json"
  mode=$([ "$1" = direct ] && echo "O_DIRECT" || echo "buffered")
  printf '| %s | %s | %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.1f | %.1f | %s | %s | %s |\n' "$mode" "$2" "$3" \
    "$(q "$a" .iops)" "$(q "$b" .iops)" "$(jq -n "$(q "$a" .iops) / $(q "$b" .iops)")" \
    "$(q "$a" '.latency_ns.p50 / 1000')" "$(q "$b" '.latency_ns.p50 / 1000')" \
    "$(q "$a" '.latency_ns.p99 / 1000')" "$(q "$b" '.latency_ns.p99 / 1000')" \
    "$(q "$a" 'if .backend_cpu_us_per_io == null then "n/a" else (.backend_cpu_us_per_io * 10 | round / 10 | tostring) end')" \
    "$(q "$b" 'if .backend_cpu_us_per_io == null then "n/a" else (.backend_cpu_us_per_io * 10 | round / 10 | tostring) end')" \
    "$(q "$a" "$SHARE") / $(q "$b" "$SHARE")"
done
echo
echo "client core %: CPU time of the (busy-polling) client queue thread over its measured time, iovirt run / qsd run; well below 100"
echo "means other work on this machine took the client's core, and that run's numbers are noise-bound."
echo
if [ -f "$DIR/fio-io_uring-randread-qd1.json" ]; then
  FIOQ() { # file rw: iops p50_us p99_us cpu%
    jq -r --arg rw "${2#rand}" '.jobs[0][$rw] as $j | .jobs[0] as $t
      | "\($j.iops | round) \($j.clat_ns.percentile["50.000000"] / 1000 | . * 10 | round / 10) \($j.clat_ns.percentile["99.000000"] / 1000 | . * 10 | round / 10) \(($t.usr_cpu + $t.sys_cpu) | round)"' "$1"
  }
  echo "O_DIRECT against fio on the same file (fio --direct=1 --bs=4k --ioengine=io_uring|libaio, pinned to the client CPU;"
  echo "fio has no virtio layer: it is what the device gives one core):"
  echo
  echo "| rw | QD | iovirt IOPS | qsd IOPS | fio io_uring IOPS | fio libaio IOPS | iovirt / best fio | qsd / best fio | p99 µs iovirt / qsd / fio io_uring / fio libaio | fio CPU % io_uring / libaio |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"
  for rw in randread randwrite; do for qd in 1 32; do
    a="$DIR/iovirt-direct-$rw-qd$qd.json"; b="$DIR/qsd-direct-$rw-qd$qd.json"
    read -r ui u50 u99 ucpu <<< "$(FIOQ "$DIR/fio-io_uring-$rw-qd$qd.json" "$rw")"
    read -r li l50 l99 lcpu <<< "$(FIOQ "$DIR/fio-libaio-$rw-qd$qd.json" "$rw")"
    best=$(( ui > li ? ui : li ))
    printf '| %s | %s | %.0f | %.0f | %s | %s | %.2f | %.2f | %.0f / %.0f / %s / %s | %s / %s |\n' "$rw" "$qd" \
      "$(q "$a" .iops)" "$(q "$b" .iops)" "$ui" "$li" \
      "$(jq -n "$(q "$a" .iops) / $best")" "$(jq -n "$(q "$b" .iops) / $best")" \
      "$(q "$a" '.latency_ns.p99 / 1000')" "$(q "$b" '.latency_ns.p99 / 1000')" "$u99" "$l99" "$ucpu" "$lcpu"
  done; done
  echo
fi
echo "Backend memory at the end of each QD 32 randwrite run (RSS; guest RAM = the part that is our shared memfd):"
echo
echo "| backend | mode | RSS MiB | guest RAM mapped MiB | beyond guest mappings MiB | of which anon / file-backed MiB |"
echo "|---|---|---:|---:|---:|---:|"
for be in iovirt qsd; do
  for mode in buffered direct; do
    f="$DIR/$be-$mode-randwrite-qd32.json"
    printf '| %s | %s | %s |\n' "$be" "$([ "$mode" = direct ] && echo O_DIRECT || echo buffered)" \
      "$(q "$f" 'def mib: . / 1024 * 10 | round / 10 | tostring;
                 if .backend_memory == null then "n/a | n/a | n/a | n/a" else .backend_memory
                 | ([.rss_kib, .guest_mapping_kib, .beyond_guest_kib] | map(mib) | join(" | "))
                   + " | " + (.anon_kib | mib) + " / " + (.file_kib | mib) end')"
  done
done
echo

# ---- charts ----------------------------------------------------------------------------------------------------
# Data files for gnuplot: one line per case (IOPS), one block per backend and case (latency percentile curve; from
# latency_curve_ns, or the few named percentiles when the JSON came from an older client).
mkdir -p "$CHARTS"
: > "$DIR/iops.dat"
for c in "${CASES[@]}"; do
  set -- $c
  a="$DIR/iovirt-$1-$2-qd$3.json"; b="$DIR/qsd-$1-$2-qd$3.json"
  mode=$([ "$1" = direct ] && echo "O_DIRECT" || echo "buffered")
  printf '"%s\\n%s QD %s\\nclient %s/%s %%" %s %s\n' "$mode" "$2" "$3" "$(q "$a" "$SHARE")" "$(q "$b" "$SHARE")" \
    "$(q "$a" .iops)" "$(q "$b" .iops)" >> "$DIR/iops.dat"
done
CURVE='if .latency_curve_ns then .latency_curve_ns[] | "\(.[0]) \(.[1] / 1000)"
       else .latency_ns | "50 \(.p50 / 1000)", "99 \(.p99 / 1000)", "99.9 \(.p99_9 / 1000)" end'
PANELS=""
for c in "${CASES[@]}"; do
  set -- $c
  for be in iovirt qsd; do
    { echo "# $be $c"; q "$DIR/$be-$1-$2-qd$3.json" "$CURVE"; } > "$DIR/curve-$be-$1-$2-qd$3.dat"
  done
  mode=$([ "$1" = direct ] && echo "O_DIRECT" || echo "buffered")
  PANELS+="set title '$mode $2 QD $3 (client core $(q "$DIR/iovirt-$1-$2-qd$3.json" "$SHARE") / $(q "$DIR/qsd-$1-$2-qd$3.json" "$SHARE") %)'
plot '$DIR/curve-iovirt-$1-$2-qd$3.dat' using (nines(\$1)):2 with linespoints pt 7 ps 0.5 lw 2 lc rgb '#1f77b4' title 'iovirt', \
     '$DIR/curve-qsd-$1-$2-qd$3.dat' using (nines(\$1)):2 with linespoints pt 7 ps 0.5 lw 2 lc rgb '#ff7f0e' title 'qemu-storage-daemon'
"
done
STAMP="run of $(date -u -r "$DIR/qsd-direct-randwrite-qd32.json" '+%Y-%m-%d %H:%M UTC'); client core % below 95: noise-bound"
gnuplot <<EOF_GP
set terminal pngcairo size 1400,650 font "DejaVu Sans,11" noenhanced
set output '$CHARTS/bench-blk-iops.png'
set title "vhost-user-blk, 4 KiB random I/O, one queue, one backend core: iovirt vs qemu-storage-daemon\n$STAMP"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set format y "%.0s%c"
set ylabel 'IOPS (log scale)'
iops(v) = v >= 10000 ? sprintf("%.0fk", v / 1000) : sprintf("%.0f", v)
set grid ytics
set key top left
set bmargin 5
plot '$DIR/iops.dat' using 2:xticlabels(1) title 'iovirt' lc rgb '#1f77b4', '' using 3 title 'qemu-storage-daemon' lc rgb '#ff7f0e', \
     '' using (\$0-0.17):2:(iops(\$2)) with labels offset 0,0.7 font ",9" notitle, \
     '' using (\$0+0.17):3:(iops(\$3)) with labels offset 0,0.7 font ",9" notitle
EOF_GP
gnuplot <<EOF_GP
set terminal pngcairo size 1600,900 font "DejaVu Sans,10" noenhanced
set output '$CHARTS/bench-blk-latency.png'
nines(p) = -log10(1 - p / 100.0)
set xtics ("50" nines(50), "90" nines(90), "99" nines(99), "99.9" nines(99.9), "99.99" nines(99.99))
set xrange [0:nines(99.99) + 0.1]
set logscale y
set xlabel 'percentile'
set ylabel 'latency µs (log scale)'
set grid
set key top left
set multiplot layout 2,4 title "vhost-user-blk request latency (submit to used) percentiles — $STAMP"
$PANELS
unset multiplot
EOF_GP
echo "bench-blk: charts $CHARTS/bench-blk-iops.png, $CHARTS/bench-blk-latency.png" >&2
echo "Raw results: $DIR" >&2
