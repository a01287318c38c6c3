#!/usr/bin/env bash
# Side-by-side benchmark: edge-lb vs HAProxy (deploy/haproxy/haproxy.cfg) on the same echo
# backends and the same load, plus the no-proxy anchor (client straight to the backends).
# Every process started here is stopped here, by pid. Bounded: each load run has --max-seconds.
#
#   cargo build --release -p edge-lb -p edge-lb-bench   (edge-lb-bench: the crate in this folder)
#   edge-lb/bench/run.sh [CONNS] [MSGS] [RUNS]     (defaults 5000 20 3)
#
# Before/after comparisons in the same runs: EDGE_LB_BINS="A=/path/to/old B=/path/to/new"
# measures each edge-lb binary in every run (fresh process each) beside the same HAProxy and
# anchor, in an order that rotates from run to run (haproxy A B, A B haproxy, B haproxy A, ...);
# labels are `edge-lb-A#run`.
# A binary may name its own configuration: "A=/path/to/edge-lb@/path/to/conf.yaml".
# HAPROXY_CFG=... runs HAProxy with another configuration (e.g. with `option splice-auto`).
#
# Prints one JSON line per measurement; the median table is written by hand into docs/edge-lb.md.
set -euo pipefail
CONNS=${1:-5000}
MSGS=${2:-20}
RUNS=${3:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
HAPROXY_CFG=${HAPROXY_CFG:-$ROOT/deploy/haproxy/haproxy.cfg}
read -r -a EDGES <<<"${EDGE_LB_BINS:-=$BIN/edge-lb}"
ulimit -n 20000
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$BIN/edge-lb-bench" backends --base-port 28101 --count 3 --seconds 1800 2>/dev/null &
BACKENDS=$!; PIDS+=($BACKENDS)
sleep 1
# Fresh proxy processes for every run, so each memory figure starts from a clean heap.
for run in $(seq 1 "$RUNS"); do
  "$BIN/edge-lb-bench" ws --label "direct#$run" --target 127.0.0.1:28101,127.0.0.1:28102,127.0.0.1:28103 \
      --conns "$CONNS" --msgs "$MSGS" --max-seconds 300 --backends-pid "$BACKENDS"
  # HAProxy and each edge-lb binary take turns going first (run 1: haproxy A B, run 2:
  # A B haproxy, ...): whichever runs right after another proxy inherits its closed
  # connections' TIME-WAIT entries and a warmer machine, so a fixed order would bias the ratio.
  PROXIES=(haproxy "${EDGES[@]}")
  n=${#PROXIES[@]}
  for i in $(seq 0 $((n - 1))); do
    spec=${PROXIES[$(((i + run - 1) % n))]}
    if [[ $spec == haproxy ]]; then
      haproxy -db -f "$HAPROXY_CFG" >/tmp/haproxy-bench.log 2>&1 &
      HAPROXY=$!; PIDS+=($HAPROXY)
      sleep 4   # 2 passing checks at 1 s
      "$BIN/edge-lb-bench" ws --label "haproxy#$run" --target 127.0.0.1:28081 --pid "$HAPROXY" \
          --conns "$CONNS" --msgs "$MSGS" --max-seconds 300 --backends-pid "$BACKENDS"
      kill "$HAPROXY"; wait "$HAPROXY" 2>/dev/null || true
      sleep 1
      continue
    fi
    name=${spec%%=*}; exe=${spec#*=}; conf=$ROOT/edge-lb/bench/edge-lb-bench.yaml
    if [[ $exe == *@* ]]; then conf=${exe#*@}; exe=${exe%%@*}; fi
    RUST_LOG=warn "$exe" -c "$conf" >/tmp/edge-lb-bench.log 2>&1 &
    EDGE=$!; PIDS+=($EDGE)
    sleep 4   # 2 passing checks at 1 s
    # A loaded machine starts it slower: wait for its admin readiness (bounded, 30 s).
    for _ in $(seq 1 30); do
      curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:28092/readyz 2>/dev/null | grep -q 200 && break
      sleep 1
    done
    "$BIN/edge-lb-bench" ws --label "edge-lb${name:+-$name}#$run" --target 127.0.0.1:28082 --pid "$EDGE" \
        --conns "$CONNS" --msgs "$MSGS" --max-seconds 300 --backends-pid "$BACKENDS"
    kill "$EDGE"; wait "$EDGE" 2>/dev/null || true
    sleep 1
  done
done
