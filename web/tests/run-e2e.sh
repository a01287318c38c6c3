#!/usr/bin/env bash
# The web client's tests: the QR encoder's unit tests (node --test), then the
# end-to-end scenario in headless Chromium (playwright-core) against a real
# quiz-core in embedded mode, at phone (390x844) and desktop (1280x800) width.
#
#   bash web/tests/run-e2e.sh
#
# Env:
#   QUIZ_CORE_BIN   an already built quiz-core (default: cargo build -p quiz-core)
#   E2E_BASE_URL    test a server that is already running (e.g. edge-lb in
#                   front of core nodes) instead of starting core
#   ARTIFACTS_DIR   screenshots, CSVs and core's log (default target/web-artifacts)
#   WIDTHS          phone,desktop (default both)
#   CHROMIUM        the browser (default /usr/bin/chromium, installed with apt if missing)
#
# Exits non-zero when any test fails. Stops only the core it started, by pid.
set -euo pipefail

WEB=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$(cd "$WEB/.." && pwd)
ART=${ARTIFACTS_DIR:-$ROOT/target/web-artifacts}
export ARTIFACTS_DIR=$ART
mkdir -p "$ART"
log() { printf '[web-e2e] %s\n' "$*" >&2; }

# --- node packages (playwright-core only; npm's cache makes reruns offline) ---
cd "$WEB"
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# --- the browser: Debian's chromium (playwright's own download is not used) ---
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM" ]; then
  log "installing chromium with apt"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# --- unit tests of the QR encoder ---
log "QR encoder unit tests"
node --test tests/qr.test.mjs tests/unit.test.mjs

# --- the server under test ---
CORE_PID=
TMP=$(mktemp -d)
cleanup() {
  if [ -n "$CORE_PID" ] && kill -0 "$CORE_PID" 2>/dev/null; then
    kill "$CORE_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$CORE_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$CORE_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

if [ -n "${E2E_BASE_URL:-}" ]; then
  BASE_URL=$E2E_BASE_URL
  log "testing the running server at $BASE_URL"
else
  BIN=${QUIZ_CORE_BIN:-}
  if [ -z "$BIN" ]; then
    log "building quiz-core"
    (cd "$ROOT" && cargo build -q -p quiz-core)
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/quiz-core
  fi
  [ -x "$BIN" ] || { log "no quiz-core binary at $BIN"; exit 1; }
  PORT=$(node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})")
  BASE_URL=http://127.0.0.1:$PORT
  log "starting $BIN on $BASE_URL (embedded mode)"
  # Embedded mode: distributed settings exported by the caller (the local
  # stack's `stack env`, as deploy/local/test does) must not leak in.
  env -u QUIZ_REDIS_NODES -u QUIZ_KAFKA_BROKERS \
    QUIZ_LISTEN=127.0.0.1:$PORT QUIZ_EVENT_LOG=$TMP/events.jsonl QUIZ_NODE_NAME=web-e2e \
    "$BIN" >"$ART/core.log" 2>&1 &
  CORE_PID=$!
  for i in $(seq 150); do
    if curl -fsS "$BASE_URL/healthz" >/dev/null 2>&1; then break; fi
    kill -0 "$CORE_PID" 2>/dev/null || { log "core exited; its log:"; grep -v "^  " "$ART/core.log" | tail -20 >&2; exit 1; }
    [ "$i" = 150 ] && { log "core did not become healthy in 30 s"; exit 1; }
    sleep 0.2
  done
  curl -fsS -o /dev/null "$BASE_URL/" || { log "core does not serve the web client at / (is core/src/web.rs hooked into the router?)"; exit 1; }
fi

log "e2e scenario against $BASE_URL; artifacts in $ART"
BASE_URL=$BASE_URL node tests/e2e.mjs
