#!/usr/bin/env bash
# Static check of the kernels' PTX, no GPU needed: builds the host crate (which compiles the
# device crate to PTX for sm_80 and sm_90), then runs tests/ptx_check.rs, which
#   - fails on any `trap` instruction (a panic path left in device code),
#   - checks each kernel's parameter blob size against its ABI struct,
#   - assembles each PTX with ptxas -v and fails on spills or a stack frame,
# and prints registers / barriers / stack / spills / static shared memory per kernel.
#
# Usage: bash scripts/ptx-check.sh [extra libtest args, e.g. ptxas_sm90]
# FERRINFER_PTXAS=/path/to/ptxas uses another ptxas than the project-local one.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [[ -z "${FERRINFER_PTXAS:-}" ]]; then
    bash scripts/install-ptxas.sh
fi
FERRINFER_REQUIRE_PTXAS=1 cargo test --release -p ferrinfer-harness --test ptx_check -- \
    --nocapture --test-threads=1 "$@"
