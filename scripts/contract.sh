#!/usr/bin/env bash
# The API contract as client developers meet it (run by `make test`):
#   1. openapi-python-client (pinned) generates a client from api.yaml with no error or
#      warning, and tests/contract/client_roundtrip.py uses it against a live server;
#   2. schemathesis (pinned) runs every check against the live server's document;
#   3. the web console (/ui) and Swagger UI (/docs) are driven in headless Chromium
#      (Debian's) with puppeteer-core (pinned): tests/browser/console.mjs.
# The server is `sluice standalone` on a database of its own, with the example
# configuration (its demo key) and ClickHouse 26.9; it is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.tools/contract
PORT=${CONTRACT_PORT:-18089}
DB=sluice_contract
log() { echo "contract: $*" >&2; }

if ! "$VENV/bin/python" -c 'import openapi_python_client, schemathesis' 2>/dev/null; then
    log "installing openapi-python-client and schemathesis into $VENV (one-time)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        'openapi-python-client==0.29.1' 'schemathesis==4.32.5'
fi

work=$(mktemp -d)
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

log "generating a Python client from api.yaml"
(cd "$work" && "$OLDPWD/$VENV/bin/openapi-python-client" generate \
    --path "$OLDPWD/api.yaml" --config "$OLDPWD/tests/contract/generator.yaml" \
    --meta none --output-path sluice_client) >"$work/generate.log" 2>&1 || {
    cat "$work/generate.log"; log "openapi-python-client failed"; exit 1; }
if grep -qiE "warning|error" "$work/generate.log"; then
    cat "$work/generate.log"; log "openapi-python-client warned"; exit 1
fi

psql -h 127.0.0.1 -U postgres -qc "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export SLUICE_DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB"
export SLUICE_API__LISTEN="127.0.0.1:$PORT"
export SLUICE_RESULTS__URL="$work/results"
# Event streams of executions that never end (scheduled far ahead) close soon, as they
# would after `api.event_stream`; a client resumes them.
export SLUICE_API__EVENT_STREAM=2s
# Long polls of executions that never end (scheduled far ahead) last up to max_wait; the
# served document states this server's bound, so schemathesis asks within it.
export SLUICE_API__MAX_WAIT=3s
RUST_LOG=warn target/debug/sluice --config sluice.example.toml standalone >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" 2>/dev/null && break
    sleep 0.2
done
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/ready" || { cat "$work/server.log"; exit 1; }

export SLUICE_URL="http://127.0.0.1:$PORT" SLUICE_TOKEN=sk_local_demo
PYTHONPATH="$work" "$VENV/bin/python" tests/contract/client_roundtrip.py

log "schemathesis, all checks, against the live document"
"$VENV/bin/schemathesis" --config-file tests/contract/schemathesis.toml \
    run "http://127.0.0.1:$PORT/openapi.json" \
    --checks all --header "Authorization: Bearer $SLUICE_TOKEN" \
    --max-examples "${CONTRACT_EXAMPLES:-100}" --seed 1 --no-color \
    >"$work/schemathesis.log" 2>&1 || { cp "$work/schemathesis.log" /tmp/schemathesis.last.log; cat "$work/schemathesis.log"; cat "$work/server.log" | tail -20; log "schemathesis found failures"; exit 1; }
tail -5 "$work/schemathesis.log"

log "the web console and Swagger UI in headless Chromium"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing node and npm (one-time)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
fi
if ! command -v chromium >/dev/null; then
    log "installing chromium (one-time)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
BROWSER=.tools/browser
if [ ! -f "$BROWSER/node_modules/puppeteer-core/package.json" ] \
    || ! grep -q '"version": "25.16.0"' "$BROWSER/node_modules/puppeteer-core/package.json"; then
    log "installing puppeteer-core 25.16.0 into $BROWSER (one-time)"
    mkdir -p "$BROWSER"
    (cd "$BROWSER" && npm install --silent --no-audit --no-fund puppeteer-core@25.16.0)
fi
# ES modules resolve packages next to the script: run it from the tools directory.
cp tests/browser/console.mjs "$BROWSER/console.mjs"
export ARTIFACTS="$PWD/target/browser-artifacts"
rm -rf "$ARTIFACTS" && mkdir -p "$ARTIFACTS"
node "$BROWSER/console.mjs" || { tail -20 "$work/server.log"; log "browser check failed; screenshots in $ARTIFACTS"; exit 1; }
log "screenshots in $ARTIFACTS"
