#!/usr/bin/env bash
# The main job: set up (pinned Rust toolchain, project-local ptxas), build the `ferrinfer` CLI in
# release mode and run its demo. Extra arguments go to `ferrinfer demo` (see `--help`).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
exec cargo run --release -p ferrinfer --bin ferrinfer -- demo "$@"
