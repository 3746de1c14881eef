#!/usr/bin/env bash
# One-time (and idempotent) set-up of everything the build needs, all of it user- or
# project-local:
#   1. the Rust toolchain that rust-toolchain.toml names (channel + components such as rust-src
#      and llvm-bitcode-linker, which the nvptx64 device build needs). Automatic installs are off
#      on these machines (RUSTUP_AUTO_INSTALL=0), so this is explicit; a no-op once installed.
#   2. `ptxas` in the git-ignored .tools/ (scripts/install-ptxas.sh);
#   3. the default model, SmolLM2-135M-Instruct (GGUF), in the git-ignored models/
#      (scripts/fetch-model.sh; FERRINFER_SKIP_MODEL=1 skips it).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! command -v rustup >/dev/null 2>&1; then
    echo "error: rustup is not on PATH; install it from https://rustup.rs first" >&2
    exit 1
fi

# With no argument, `rustup toolchain install` installs the toolchain of rust-toolchain.toml
# (rustup >= 1.28), with the components listed there. --no-self-update: never replace the
# rustup binary itself as a side effect (a RUSTUP_HOME without settings would).
echo "setup: rust toolchain from rust-toolchain.toml"
rustup toolchain install --no-self-update
rustc --version

bash "$root/scripts/install-ptxas.sh"

if [[ "${FERRINFER_SKIP_MODEL:-0}" != 1 ]]; then
    bash "$root/scripts/fetch-model.sh"
fi
