#!/usr/bin/env bash
# Checks that the GPU tests are exactly the `#[ignore = "needs a CUDA GPU"]` tests, so that a
# machine without a GPU reports them as ignored (never as passed) and the GPU runner
# (gpu-bundle/run.sh, which passes --include-ignored) runs them all:
#   - every #[test] whose body asks for a GPU (`gpu_or_skip(`, `Gpu::discover(`, `Gpu::new(`)
#     carries that attribute;
#   - every test carrying it asks for a GPU (a CPU test must never be ignored as a GPU test).
# Scans tests/, src/ (the harness), host/src, kernels-gpu/src, engine/ and cli/. Run by
# scripts/test.sh.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python3 - tests src host/src kernels-gpu/src engine/src engine/tests cli/src <<'EOF'
import os, re, sys

ATTR = '#[ignore = "needs a CUDA GPU"]'
ASKS = re.compile(r'gpu_or_skip\(|Gpu::discover\(|Gpu::new\(')
bad, gpu, cpu = [], 0, 0
for top in sys.argv[1:]:
    for dirpath, _, files in os.walk(top):
        for f in sorted(files):
            if not f.endswith('.rs'):
                continue
            path = os.path.join(dirpath, f)
            lines = open(path, encoding='utf-8').read().split('\n')
            for i, line in enumerate(lines):
                if line.strip() != '#[test]':
                    continue
                # The attributes up to the `fn` line, then the body up to the closing brace at
                # the fn's own indentation (rustfmt'd code).
                j, attrs = i + 1, []
                while j < len(lines) and not re.match(r'\s*(pub\s+)?(async\s+)?fn\s', lines[j]):
                    attrs.append(lines[j].strip())
                    j += 1
                if j == len(lines):
                    continue
                indent = lines[j][: len(lines[j]) - len(lines[j].lstrip())]
                k = j + 1
                while k < len(lines) and lines[k] != indent + '}':
                    k += 1
                name = re.search(r'fn\s+(\w+)', lines[j]).group(1)
                asks = bool(ASKS.search('\n'.join(lines[j:k])))
                ignored = ATTR in attrs
                where = f'{path}:{j + 1}: {name}'
                if asks and not ignored:
                    bad.append(f'{where}: asks for a GPU but lacks {ATTR}')
                elif ignored and not asks:
                    bad.append(f'{where}: marked {ATTR} but never asks for a GPU')
                gpu += asks
                cpu += not asks
for b in bad:
    print(f'error: {b}', file=sys.stderr)
print(f'check-gpu-ignores: {gpu} GPU tests marked {ATTR}, {cpu} other #[test] functions'
      f'{"" if not bad else f", {len(bad)} wrong"}')
sys.exit(1 if bad else 0)
EOF
