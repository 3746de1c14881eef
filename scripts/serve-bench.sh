#!/usr/bin/env bash
# The serving benchmark of issue #19: `ferrinfer serve` on loopback, driven by the bounded load
# generator (ferrinfer-server's `load` example), at the levels the issue names:
#   1. 64 concurrent streaming chat requests with ~512-token prompts (closed loop): TTFT p99;
#   2. short requests (~64 prompt tokens, 16 output tokens) at rising open-loop arrival rates:
#      completed requests/s held with 0 errors;
#   3. 64 streams sharing a ~1024-token system prompt, with and without the prefix cache: the
#      KV pages in use and the prompt tokens computed (from /metrics), and TTFT.
# Every level is bounded (fixed request counts, a deadline per request), so the script ends by
# itself. Runs where the binaries are (the GPU bundle unpacked, or target/release):
#
#   bash scripts/serve-bench.sh --bin DIR [--model FILE] [--out DIR] [--quick]
#
# DIR holds `ferrinfer` and `load` (the GPU bundle's bin/; locally: build both, see README).
# --quick: small counts (a smoke run on the CPU backend). Output: one log per level and
# metrics snapshots in --out (default: a temporary folder), and a summary on stdout.
set -euo pipefail

bin=""
model="${FERRINFER_MODEL:-}"
out=""
quick=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin="$2"; shift ;;
        --model) model="$2"; shift ;;
        --out) out="$2"; shift ;;
        --quick) quick=1 ;;
        -h | --help) sed -n 2,17p "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[[ -x "$bin/ferrinfer" && -x "$bin/load" ]] || { echo "--bin DIR must hold ferrinfer and load" >&2; exit 2; }
out="${out:-$(mktemp -d)}"
mkdir -p "$out"
port=8765
url="http://127.0.0.1:$port"
model_args=()
[[ -n "$model" ]] && model_args=(--model "$model")

if [[ $quick -eq 1 ]]; then
    n_long=8; n_short=16; rates=4; n_shared=8; streams=4; kv=32768
    long_words=40; short_words=8; system_words=64
else
    # Word counts measured to give ~512 and ~64 prompt tokens with the chat template and the
    # default system prompt (the load generator prints the server's mean prompt tokens).
    n_long=512; n_short=4000; rates=250,500,1000,1500,2000; n_shared=256; streams=64; kv=262144
    long_words=482; short_words=34; system_words=1024
fi

# get URL: the body on stdout (curl, else Python's urllib).
get() {
    if command -v curl >/dev/null; then
        curl -fs "$1"
    else
        python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
    fi
}

server_pid=""
stop_server() {
    if [[ -n "$server_pid" ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
}
trap stop_server EXIT

# start_server NAME ARGS...: starts `ferrinfer serve` and waits for /health (at most 120 s).
start_server() {
    local name="$1"
    shift
    "$bin/ferrinfer" serve "${model_args[@]}" --port "$port" "$@" >"$out/server-$name.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 240); do
        if get "$url/health" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            echo "server $name exited:" >&2
            tail -20 "$out/server-$name.log" >&2
            return 1
        fi
        sleep 0.5
    done
    echo "server $name did not become healthy" >&2
    return 1
}

metrics() { get "$url/metrics" >"$out/metrics-$1.txt" || true; }

# steps BEFORE AFTER: the engine steps between two metrics snapshots, by kind (count, mean and
# total wall time), and the tokens generated: where the server's time went during a level.
steps() {
    awk '
        { f = FILENAME == ARGV[1] ? 1 : 2 }   # not FNR: an empty snapshot has no first line
        /^ferrinfer_engine_step_seconds_(count|sum)\{/ {
            split($1, a, /[{}"]/); key = a[1] "/" a[3]; v[f, key] = $2
        }
        $1 == "ferrinfer_generation_tokens_total" { g[f] = $2 }
        END {
            line = "engine steps:"
            n = split("decode mixed", kinds, " ")
            for (i = 1; i <= n; i++) {
                c = v[2, "ferrinfer_engine_step_seconds_count/" kinds[i]] - v[1, "ferrinfer_engine_step_seconds_count/" kinds[i]]
                s = v[2, "ferrinfer_engine_step_seconds_sum/" kinds[i]] - v[1, "ferrinfer_engine_step_seconds_sum/" kinds[i]]
                line = line sprintf(" %s %d (mean %.2f ms, %.2f s)", kinds[i], c, c ? s / c * 1e3 : 0, s)
            }
            print line sprintf(", %d tokens generated", g[2] - g[1])
        }' "$out/metrics-$1.txt" "$out/metrics-$2.txt"
}

# level NAME LOAD-ARGS...: one load run, its report lines printed and kept.
level() {
    local name="$1"
    shift
    echo "== $name: load $*"
    "$bin/load" --url "$url" "$@" 2>&1 | tee "$out/load-$name.log"
}

common=(--kv-tokens "$kv" --max-queued 8192)

for st in 512 2048 8192; do
    start_server "st$st" "${common[@]}" --step-tokens "$st"
    level "long-st$st" --streams "$streams" --requests "$n_long" --user-words "$long_words" \
        --max-tokens 64 --ignore-eos
    # One load run per rate, with the engine's step statistics of each.
    for rate in ${rates//,/ }; do
        metrics "st$st-before-$rate"
        level "short-st$st-$rate" --rates "$rate" --requests "$n_short" --user-words "$short_words" \
            --max-tokens 16 --ignore-eos
        metrics "st$st-after-$rate"
        steps "st$st-before-$rate" "st$st-after-$rate"
    done
    metrics "st$st"
    stop_server
done

for cache in on off; do
    flag=()
    [[ $cache == off ]] && flag=(--no-prefix-cache)
    start_server "shared-$cache" "${common[@]}" --step-tokens 8192 "${flag[@]}"
    # Peak KV pages in use while the level runs: /metrics sampled every 50 ms.
    (
        peak=0
        while sleep 0.05; do
            u="$(get "$url/metrics" 2>/dev/null | awk '$1 == "ferrinfer_kv_pages_used" { print $2 }')"
            [[ -n "$u" ]] && awk -v u="$u" -v p="$peak" 'BEGIN { exit !(u > p) }' && peak="$u" &&
                echo "$peak" >"$out/peak-pages-$cache.txt"
        done
    ) &
    sampler=$!
    level "shared-$cache" --streams "$streams" --requests "$n_shared" --system-words "$system_words" \
        --user-words 64 --max-tokens 32 --ignore-eos
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    metrics "shared-$cache"
    echo "peak KV pages in use (prefix cache $cache): $(cat "$out/peak-pages-$cache.txt" 2>/dev/null || echo '?')"
    awk '$1 == "ferrinfer_prompt_tokens_total" { p = $2 } $1 == "ferrinfer_prefix_cache_tokens_total" { c = $2 }
         END { printf "prompt tokens: %d received, %d from the prefix cache, %d computed\n", p, c, p - c }' \
        "$out/metrics-shared-$cache.txt"
    stop_server
done
echo "serve-bench: logs in $out"
