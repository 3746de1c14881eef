#!/usr/bin/env bash
# The official `openai` Python client against a real `ferrinfer serve` process (issue #19's
# "official openai Python client in one test"), run by scripts/test.sh, so by CI:
#   1. a fresh virtual environment in the git-ignored python/.venv-openai with the pinned
#      `openai` package from PyPI (no torch, no numpy);
#   2. `ferrinfer serve --cpu` (the CPU backend, the default model that scripts/setup.sh
#      fetched) on a free loopback port, with an API key, waited for on /health;
#   3. scripts/openai-client-check.py through the client: /v1/models, chat whole and streamed
#      (the same text, the usage chunk), a completion with a stop sequence, a 400 for
#      max_tokens = 0, a 401 for a wrong key. The server is stopped on exit, whatever happened.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

OPENAI_VERSION=3.63.0
venv="$root/python/.venv-openai"

echo "openai-client-test: venv with openai==$OPENAI_VERSION"
"${PYTHON:-python3}" -m venv --clear "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION"

echo "openai-client-test: building the CLI"
cargo build --release --quiet -p ferrinfer-cli --bin ferrinfer

port="$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="ci-$RANDOM$RANDOM"
log="$(mktemp "${TMPDIR:-/tmp}/ferrinfer-serve.XXXXXX")"
target/release/ferrinfer serve --cpu --host 127.0.0.1 --port "$port" --api-key "$key" \
    --kv-tokens 4096 >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

# /health answers once the model is loaded (at most 180 s on a slow machine).
if ! "$venv/bin/python" - "$port" "$pid" <<'PY'; then
import os, sys, time, urllib.request
port, pid = sys.argv[1], int(sys.argv[2])
for _ in range(360):
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
        sys.exit(0)
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit("the server exited")
        time.sleep(0.5)
sys.exit("the server did not become healthy")
PY
    echo "openai-client-test: server log:" >&2
    tail -20 "$log" >&2
    exit 1
fi

FERRINFER_URL="http://127.0.0.1:$port/v1" FERRINFER_API_KEY="$key" \
    "$venv/bin/python" scripts/openai-client-check.py
