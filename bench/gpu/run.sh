#!/usr/bin/env bash
# The GPU benchmark (issue 8): a random-initialised Llama-3-8B-shaped model in bf16 on one CUDA
# device, full cache vs eviction and quantization, at 8K, 16K and 32K tokens of context.
#
# Prepared for a lent GPU machine; NOT RUN YET (no device was lent to the session that wrote it).
# Preconditions on that machine: a Rust toolchain, a libtorch that tch 0.26 can link (PyPI
# torch==2.13.0 through scripts/bootstrap.sh; with another torch, set LIBTORCH_USE_PYTORCH=1 and
# LIBTORCH_BYPASS_VERSION_CHECK=1 at your own risk), and $KVBENCH_HOME holding the SmolLM2 GGUF
# (its tokenizer names the random model's vocabulary) and the pg_essays data set (the prompt).
# Writes reports/performance/gpu/ (bench.csv, bench.json, the printed table in gpu.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="${KVBENCH_BIN:-target/release/kvbench}"
[[ -x "$bin" ]] || cargo build --release --workspace --bins
model="${KVBENCH_GPU_MODEL:-runs/models/llama3-8b-random-bf16}"
if [[ ! -f "$model/config.json" ]]; then
  "$bin" model init --arch llama --preset llama3-8b --random --seed 0 --dtype bf16 "$model"
  # RoPE base 500000 as Llama-3; allow 32K positions (random weights: only speed and memory matter).
  sed -i 's/"max_position_embeddings": *[0-9]*/"max_position_embeddings": 32832/' "$model/config.json"
fi
out=reports/performance/gpu
mkdir -p "$out"
"$bin" bench --device cuda --dtype bf16 --calibrate
"$bin" bench --model "$model" --device cuda --dtype bf16 \
  --methods 'full,snapkv(ratio=8),streamingllm(ratio=8),kivi(bits=4),kivi(bits=2)' \
  --contexts 8192,16384,32768 --new-tokens 64 --repeats 3 --warmup 1 --prefill-chunk 4096 \
  --out "$out" | tee "$out/gpu.md"
