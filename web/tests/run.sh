#!/usr/bin/env bash
# Runs the browser test against a real `quarry serve`.
#
# Usage: web/tests/run.sh QUARRY_BIN STORE_DIR MODEL_DIR
#
# Starts `QUARRY_BIN serve --store STORE_DIR --model MODEL_DIR --bind 127.0.0.1:PORT` in the
# background, waits until GET /api/v1/health answers 200, runs browser.test.mjs with
# QUARRY_URL pointing at it, always stops the server, and exits with the test's status.
#
# Environment (all optional):
#   QUARRY_PORT           port to bind (default: a free one)
#   QUARRY_START_TIMEOUT  seconds to wait for the server to become healthy (default 180)
#   QUARRY_SERVE_ARGS     extra arguments for `quarry serve`, split on spaces
#   QUARRY_QUERY, QUARRY_DROP_IMAGE, QUARRY_SCREENSHOTS, CHROMIUM_PATH, QUARRY_TIMEOUT_MS
#                         passed through to the test (see browser.test.mjs)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  echo "usage: $0 QUARRY_BIN STORE_DIR MODEL_DIR" >&2
  exit 2
}

[ $# -eq 3 ] || usage
bin=$1
store=$2
model=$3
[ -x "$bin" ] || { echo "error: $bin is not an executable quarry binary (build it with cargo build --release)" >&2; exit 2; }
[ -d "$store" ] || { echo "error: store folder $store does not exist (build one with quarry index)" >&2; exit 2; }
[ -d "$model" ] || { echo "error: model folder $model does not exist" >&2; exit 2; }
command -v node >/dev/null || { echo "error: node (>= 20) is needed to run the browser test" >&2; exit 2; }

# Each probe is a short node program, so the script needs nothing beyond node (no curl).
free_port() {
  node -e 'const s = require("net").createServer(); s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}
health_status() {
  node -e 'fetch(process.argv[1], { signal: AbortSignal.timeout(2000) }).then((r) => console.log(r.status), () => console.log(0));' "$1"
}

port=${QUARRY_PORT:-$(free_port)}
url="http://127.0.0.1:$port"
timeout_s=${QUARRY_START_TIMEOUT:-180}
log=$(mktemp "${TMPDIR:-/tmp}/quarry-serve.XXXXXX")

# shellcheck disable=SC2086 # QUARRY_SERVE_ARGS is split on purpose
"$bin" serve --store "$store" --model "$model" --bind "127.0.0.1:$port" ${QUARRY_SERVE_ARGS:-} >"$log" 2>&1 &
server=$!

stop_server() {
  if kill -0 "$server" 2>/dev/null; then
    kill "$server" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$server" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$server" 2>/dev/null; then
      echo "quarry serve did not stop within 10 s of SIGTERM; killing it" >&2
      kill -9 "$server" 2>/dev/null || true
    fi
    wait "$server" 2>/dev/null || true
  fi
  rm -f "$log"
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log() {
  echo "--- last lines of the quarry serve log ---" >&2
  tail -n "${1:-60}" "$log" >&2 || true
}

echo "waiting for $url/api/v1/health (up to ${timeout_s} s)"
deadline=$((SECONDS + timeout_s))
while :; do
  code=$(health_status "$url/api/v1/health")
  [ "$code" = 200 ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    echo "error: quarry serve exited before it became healthy" >&2
    show_log 200
    exit 1
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "error: $url/api/v1/health did not answer 200 within ${timeout_s} s (last answer: $code; 0 = no connection)" >&2
    show_log
    exit 1
  fi
  sleep 0.5
done
echo "quarry serve is ready at $url"

cd "$here"
if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi

set +e
QUARRY_URL=$url node --test browser.test.mjs
status=$?
set -e
if [ "$status" -ne 0 ]; then
  show_log 80
fi
echo "screenshots: ${QUARRY_SCREENSHOTS:-$here/screenshots}"
exit "$status"
