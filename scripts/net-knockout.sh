#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Where the single-port vhost-user-net frame goes, measured inside ONE backend process: the experiment patch
# docs/experiments/net-knockouts.patch (never merged) adds a switch that turns one variant of the transmit path on
# and off every 500 ms — a stage knocked out (the switch, the copy, the header check...) or a candidate change — and
# counts the frames taken in each state. Both states see the same host: on this 2-vCPU VM the rate of separate runs
# moves by up to 2x with the host's state (docs/benchmarks.md), which hides a 5 % change; alternating every half
# second inside one run does not.
#
#   scripts/net-knockout.sh [--experiment NAME] [--k K] [--topology single|p2p] [--runs N] [--seconds S]
#                           [--size BYTES] [--fast-mpps M] [--dir DIR]
#
# NAME (default net-knockouts) picks the patch docs/experiments/NAME.patch; its first line names the commit it applies
# to ("Base: <commit>"):
#   net-knockouts  the variants below (--k)
#   ring-batch  the batch forms of pop and push and the walk's marks only for linked descriptors (on) against one
#               pop and one push per chain with every descriptor marked (off, the form before)
#   rx-staging  a receive queue stages the chains it fills and returns them together at the end of the burst (on)
#               against returning each as soon as it is filled (off); measure it with --topology p2p
#   rx-batch-pop  a receive queue takes a burst's chains with one batch pop and returns them with one batch push
#               (on, landed) against one pop and one push per chain (off); --k 1: on also stores a byte into each
#               chain taken ahead (a write prefetch); --topology p2p
#   desc-read-ahead  a split queue's batch pop reads the batch's avail entries and descriptors in one tight loop
#               first (on, a software prefetch) against popping at once (off); --topology p2p
#   tx-two-pass  a transmit queue copies a group's one-buffer frames into their burst slots (and reads their
#               headers' two fields) in one loop, then checks and appends them (on), against frame by frame (off)
#   tx-header-skip  a transmit queue does not read the virtio-net header's flags and GSO type (on, as DPDK's vhost
#               backend when no offload is negotiated) against reading and checking them (off, main)
#   rx-two-pass  a receive queue does the bookkeeping of a burst's frames first, then writes their headers and
#               frames into the guest's buffers back to back (on), against frame by frame (off); --topology p2p
#   used-two-pass  a batch push checks and marks every chain first, then writes the batch's used entries back to
#               back (on), against chain by chain (off); --topology p2p
#   rx-inline-copy  the receive queue's second pass copies frames of up to 128 bytes with 8-byte loads and stores in
#               line (on) instead of through MemorySegment.copy's arraycopy stub (off, main); --topology p2p
#   tx-inline-copy  the transmit queue copies one-buffer frames of up to 128 bytes out of the guest in line (on)
#               instead of through the stub (off, main at 0ca5f26, whose receive copy is in line); with --k 1 both
#               copies in line (on) against both through the stub (off)
#   rx-copy-landed  the receive copy as landed (Chains.copy: small frames in line, ranges checked first; on)
#               against the arraycopy stub for every frame (off, the form before 0ca5f26); --topology p2p
#   rx-copy-in-place  the receive copy's loop in place, no up-front range checks (on, the form of the first two
#               runs) against Chains.copy as landed (off, main); --topology p2p
#   rx-header-first  the receive queue writes each header before its frame, the guest buffer's stores in ascending
#               address order (on), against the frame first, then the header (off, main); --topology p2p
#   tx-deferred-copy  the transmit queue records each small one-buffer frame and copies a burst's frames back to
#               back before forwarding it (on, as DPDK's vhost defers small copies) against one copy per chain as it
#               is handled (off, main)
#   used-in-order  with VIRTIO_F_IN_ORDER, a batch returned with nothing written (a transmit batch) stores only its
#               last used entry and moves the used index past the whole batch (on) against an entry per chain (off)
#   tx-burst-64  the transmit queue forwards its burst of small frames at 64 frames, one forward per full batch
#               (on), against 32 (off, main)
#   tx-copy-header-only  the transmit queue copies only the first 16 bytes of each small one-buffer frame into its
#               burst (on; the receiver gets wrong bytes) against the whole frame (off, main): the most one copy
#               straight from the sender's buffer into the receiver's could save; --topology p2p
#   vector-copy  small frames copied with 32-byte vector loads and stores (jdk.incubator.vector; on) against main's
#               copies (off: the receive copy in 8-byte words, the transmit copy through the arraycopy stub); --k 1 the
#               receive copy, 2 the transmit copy, 3 both
# K (default 9): 1 header not read, 2 switch skipped, 3 no fault-surfacing call per burst, 4 frame not copied,
#   5 batches of 32 instead of 64, 6 no device processing (ring only), 7 counters added once per run of a flow,
#   8 read-ahead of each batch's frames, 9 addresses read when a frame is appended to the burst, 10 delivery skipped,
#   11 ring bookkeeping trimmed (loop marks only for linked descriptors, no dirty-log or snapshot look per used
#   entry), 16 = 9 plus the last decision kept across bursts, 17 = 9 against 9 without its per-frame loop (every
#   frame flooded, counted per burst), 20 no interrupt decision (and its fence) per batch, 22 the guest memory region
#   of the previous buffer tried first, 24 a queue whose ring ran dry looks at it at most every ~250 ns while it
#   polls (count every window with --fast-mpps 0: this one is about the slow mode).
# Each run: the patched build serves one port (taskset CPU 0), testpmd txonly with virtio-user (--txpkts SIZE,
# CPU 1) for S seconds; with --topology p2p it serves two ports and one testpmd forwards between two virtio-user
# ports (io, "start tx_first 8", as bench-net.sh --topology p2p) and the rates count the frames both transmit
# queues took. The backend prints both rates every 5 s ("EXP off X Mpps on Y Mpps"). The report: every
# window's on/off ratio and their median over all runs (the first window of each run, the warm-up, left out); with
# --topology p2p also split by the off state's rate into the two placements (near above 12 Mpps, far below 8). A
# ratio above 1 means the variant takes more frames per second. Rates are only comparable within a window.
# Only windows where either state took more than --fast-mpps (default 15, for 64-byte frames here) count: in the
# host's slow mode the backend finds its ring empty and the frontend sets the rate, whatever the variant (both
# states then run at 9-12 Mpps here); --fast-mpps 0 counts every window (the default with --topology p2p, whose
# rates are all below that).
# The patched checkout is a temporary git worktree at the commit the patch was made on, removed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
. "$ROOT/scripts/lib/listening.sh"
EXPERIMENT=net-knockouts
TOPOLOGY=single
K=9
RUNS=2
SECONDS_RUN=40
SIZE=64
FAST=""
DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --k) K="$2"; shift 2 ;;
    --experiment) EXPERIMENT="$2"; shift 2 ;;
    --topology) TOPOLOGY="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --seconds) SECONDS_RUN="$2"; shift 2 ;;
    --size) SIZE="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --fast-mpps) FAST="$2"; shift 2 ;;
    *) echo "net-knockout: unknown option $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done
case "$K" in 1|2|3|4|5|6|7|8|9|10|11|16|17|20|22|24) ;; *) echo "net-knockout: --k must be one of 1-11, 16, 17, 20, 22, 24: $K" >&2; exit 2 ;; esac
case "$TOPOLOGY" in single|p2p) ;; *) echo "net-knockout: --topology must be single or p2p: $TOPOLOGY" >&2; exit 2 ;; esac
[ -n "$FAST" ] || { [ "$TOPOLOGY" = p2p ] && FAST=0 || FAST=15; }
PATCH="$ROOT/docs/experiments/$EXPERIMENT.patch"
[ -f "$PATCH" ] || { echo "net-knockout: no experiment $EXPERIMENT ($PATCH does not exist)" >&2; exit 2; }
BASE="$(sed -n '1s/^Base: \([0-9a-f]*\).*/\1/p' "$PATCH")"
[ -n "$BASE" ] || { echo "net-knockout: $PATCH does not start with a \"Base: <commit>\" line" >&2; exit 2; }
[ -n "$DIR" ] || DIR="$(mktemp -d /tmp/net-knockout.XXXXXX)"
mkdir -p "$DIR"
TESTPMD="$("$ROOT/scripts/install-dpdk.sh")"
SRC="$DIR/src"
BP=""
cleanup() {
  [ -n "$BP" ] && kill "$BP" 2>/dev/null && wait "$BP" 2>/dev/null || true
  git -C "$ROOT" worktree remove --force "$SRC" 2>/dev/null || true
}
trap cleanup EXIT
git -C "$ROOT" worktree add -q --detach "$SRC" "$BASE"
git -C "$SRC" apply "$PATCH"
"$SRC/iovirt" --version >/dev/null

wait_listening() { # socket
  for _ in $(seq 600); do listening "$1" && break; kill -0 "$BP" 2>/dev/null || break; sleep 0.1; done
  listening "$1" || { echo "net-knockout: the backend did not listen on $1 (see $DIR/backend-r$r.log)" >&2; exit 1; }
}
for r in $(seq "$RUNS"); do
  sock="$DIR/r$r.sock"
  sock2="$DIR/r$r-b.sock"
  ports=(--port "vhost-user:$sock")
  [ "$TOPOLOGY" = p2p ] && ports+=(--port "vhost-user:$sock2")
  IOVIRT_JAVA_OPTS="-Diovirt.exp=true -Diovirt.exp.k=$K" taskset -c 0 "$SRC/iovirt" serve net "${ports[@]}" \
    > "$DIR/backend-r$r.log" 2>&1 &
  BP=$!
  wait_listening "$sock"
  if [ "$TOPOLOGY" = p2p ]; then
    wait_listening "$sock2"
    mac_a=02:00:00:00:00:0a mac_b=02:00:00:00:00:0b
    { sleep 1; echo "start tx_first 8"; sleep "$SECONDS_RUN"; echo stop; sleep 1; echo quit; } |
      timeout $((SECONDS_RUN + 60)) taskset -c 1 "$TESTPMD" --lcores="0@1,1@1" --no-huge -m 512 --no-pci \
        --file-prefix="nk$$" --vdev "net_virtio_user0,path=$sock,mac=$mac_a" \
        --vdev "net_virtio_user1,path=$sock2,mac=$mac_b" -- -i --forward-mode=io --eth-peer="0,$mac_b" \
        --eth-peer="1,$mac_a" --txpkts="$SIZE" --total-num-mbufs=16384 > "$DIR/frontend-r$r.log" 2>&1 || true
  else
    { sleep 1; echo start; sleep "$SECONDS_RUN"; echo stop; sleep 1; echo quit; } |
      timeout $((SECONDS_RUN + 60)) taskset -c 1 "$TESTPMD" --lcores="0@1,1@1" --no-huge -m 512 --no-pci \
        --file-prefix="nk$$" --vdev "net_virtio_user0,path=$sock" -- -i --forward-mode=txonly --txpkts="$SIZE" \
        --total-num-mbufs=16384 > "$DIR/frontend-r$r.log" 2>&1 || true
  fi
  kill "$BP" 2>/dev/null || true
  wait "$BP" 2>/dev/null || true
  BP=""
  echo "run $r:"
  grep EXP "$DIR/backend-r$r.log" | sed 's/^/  /'
done
echo "$EXPERIMENT$(case "$EXPERIMENT" in net-knockouts|tx-inline-copy|vector-copy) echo " K=$K" ;; esac), $TOPOLOGY, $RUNS runs of $SECONDS_RUN s, $SIZE-byte frames ($(date -u '+%Y-%m-%d %H:%M UTC'), logs in $DIR):"
for r in $(seq "$RUNS"); do grep EXP "$DIR/backend-r$r.log" | tail -n +2; done |
  awk -v t="$FAST" '$3 >= t || $6 >= t {print $6 / $3}' | sort -n |
  awk -v t="$FAST" '{a[NR] = $1} END {if (NR == 0) {print "  no window above " t " Mpps: the frontend set the rate"; exit 0}
       printf "  on/off over the %d windows above %s Mpps: median %.3f (min %.3f, max %.3f)\n", NR, t, a[int((NR + 1) / 2)], a[1], a[NR]}'
# Port to port's rates move between the host's two vCPU placements within a run (docs/benchmarks.md): the windows again,
# split by the off state's rate into near (above 12 Mpps), between, and far (below 8 Mpps), each with its median
# (the mean of the two middle ratios when their number is even).
if [ "$TOPOLOGY" = p2p ]; then
  for r in $(seq "$RUNS"); do grep EXP "$DIR/backend-r$r.log" | tail -n +2; done |
    awk '{r = $6 / $3; k = $3 > 12 ? 1 : ($3 < 8 ? 3 : 2); print k, r}' | sort -k1,1n -k2,2n |
    awk 'function show(k,  m) {
           if (n[k] == 0) return
           m = n[k] % 2 ? v[k, (n[k] + 1) / 2] : (v[k, n[k] / 2] + v[k, n[k] / 2 + 1]) / 2
           printf "  %s: %d windows, median %.3f (min %.3f, max %.3f)\n", name[k], n[k], m, v[k, 1], v[k, n[k]]
         }
         BEGIN {name[1] = "off above 12 Mpps (near)"; name[2] = "off 8-12 Mpps"; name[3] = "off below 8 Mpps (far)"}
         {v[$1, ++n[$1]] = $2}
         END {show(1); show(2); show(3)}'
fi
