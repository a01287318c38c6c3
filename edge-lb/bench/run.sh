#!/usr/bin/env bash
# Side-by-side benchmark: edge-lb vs HAProxy (deploy/haproxy/haproxy.cfg) on the same echo
# backends and the same load, plus the no-proxy anchor (client straight to the backends).
# Every process started here is stopped here, by pid. Bounded: each load run has --max-seconds.
#
#   cargo build --release -p edge-lb -p edge-lb-bench   (edge-lb-bench: the crate in this folder)
#   edge-lb/bench/run.sh [CONNS] [MSGS] [RUNS]     (defaults 5000 20 3)
#
# Prints one JSON line per run; the median table is written by hand into docs/edge-lb.md.
set -euo pipefail
CONNS=${1:-5000}
MSGS=${2:-20}
RUNS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
ulimit -n 20000
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN/edge-lb-bench" backends --base-port 38101 --count 3 --seconds 1800 2>/dev/null &
PIDS+=($!)
sleep 1
# Fresh proxy processes for every run, so each memory figure starts from a clean heap.
for run in $(seq 1 "$RUNS"); do
  "$BIN/edge-lb-bench" ws --label "direct#$run" --target 127.0.0.1:38101,127.0.0.1:38102,127.0.0.1:38103 \
      --conns "$CONNS" --msgs "$MSGS" --max-seconds 300
  haproxy -db -f "$ROOT/deploy/haproxy/haproxy.cfg" >/tmp/haproxy-bench.log 2>&1 &
  HAPROXY=$!; PIDS+=($HAPROXY)
  RUST_LOG=warn "$BIN/edge-lb" -c "$ROOT/edge-lb/bench/edge-lb-bench.yaml" >/tmp/edge-lb-bench.log 2>&1 &
  EDGE=$!; PIDS+=($EDGE)
  sleep 4   # both proxies: 2 passing checks at 1 s
  "$BIN/edge-lb-bench" ws --label "haproxy#$run" --target 127.0.0.1:38081 --pid "$HAPROXY" \
      --conns "$CONNS" --msgs "$MSGS" --max-seconds 300
  sleep 1
  "$BIN/edge-lb-bench" ws --label "edge-lb#$run" --target 127.0.0.1:38082 --pid "$EDGE" \
      --conns "$CONNS" --msgs "$MSGS" --max-seconds 300
  kill "$HAPROXY" "$EDGE"; wait "$HAPROXY" "$EDGE" 2>/dev/null || true
  sleep 1
done
