#!/usr/bin/env bash
# kvbench vs transformers (and kvpress with --press), side by side on SmolLM2-135M, f32, CPU.
# Installs what it needs (the test reference packages: transformers, gguf, kvpress) into .venv,
# builds kvbench, fetches the model and essays, then runs compare.py. Extra arguments go to it,
# e.g. bench/compare/run.sh --contexts 1024,4096 --repeats 3 --threads 2 --press snapkv
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
scripts/bootstrap.sh --test
cargo build --release --workspace --bins
home="${KVBENCH_HOME:-$HOME/.cache/kvbench}"
target/release/kvbench model fetch smollm2-135m >/dev/null
target/release/kvbench data fetch pg_essays >/dev/null
gguf="$(target/release/kvbench model list | awk '/smollm2-135m/ {print $NF}' | head -1)"
[[ -f "$gguf" ]] || gguf="$(find "$home/models" -name '*.gguf' -path '*mollm2*' | head -1)"
exec .venv/bin/python bench/compare/compare.py --gguf "$gguf" --home "$home" --kvbench target/release/kvbench "$@"
