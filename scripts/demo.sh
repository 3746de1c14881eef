#!/usr/bin/env bash
# The main job: set up (pinned Rust toolchain, project-local ptxas, the SmolLM2-135M-Instruct
# model), build the `ferrinfer` CLI in release mode and generate text with the real model through
# ferrinfer's paged KV cache and attention — on the GPU when there is one, else on the CPU
# backend. With no arguments it answers a default chat prompt; any arguments go to
# `ferrinfer generate` instead (e.g. `--prompt "..." --max-tokens 64 --temperature 0.7 --seed 1`;
# see `--help`). The attention-only micro-benchmark is `ferrinfer demo`.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
if [[ $# -eq 0 ]]; then
    set -- --prompt "Explain in three sentences what a paged KV cache is and why LLM servers use one." \
        --max-tokens 96
fi
exec cargo run --release -p ferrinfer-cli --bin ferrinfer -- generate "$@"
