#!/bin/bash
# Decoding with the projection weights stored in f32, bf16 and f16 (compute f32, CPU), side by
# side in one sitting: two rounds of `kvbench bench` per storage (the order rotating), SmolLM2 at
# 1K tokens, batch 1 and 16; then `kvbench generate --json` per 16-bit storage, whose
# `weight_logit_error` is the largest change of the prompt's last logits from f32 weights.
#   reports/performance/weight-dtype/run.sh OUT [KVBENCH_BIN]   (from the repository root)
set -euo pipefail
out=${1:?usage: run.sh OUT [KVBENCH_BIN]}
bin=${2:-target/release/kvbench}
mkdir -p "$out"
drop() { if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then sync && echo 3 > /proc/sys/vm/drop_caches; fi; }
for round in 1 2; do
  order=(f32 bf16 f16)
  [ $round = 2 ] && order=(f16 bf16 f32)
  for w in "${order[@]}"; do
    drop
    flag=(); [ $w != f32 ] && flag=(--weight-dtype $w)
    "$bin" bench --methods full --contexts 1024 --new-tokens 64 --batch 1,16 \
      --repeats 3 --warmup 1 --threads 2 --device cpu "${flag[@]}" --out "$out/$w-$round" > "$out/$w-$round.txt" 2>&1
  done
done
# The prompt: the first 6,000 bytes of this repository's README.
head -c 6000 README.md > "$out/prompt.txt"
for w in bf16 f16; do
  "$bin" generate --prompt-file "$out/prompt.txt" --max-new-tokens 32 --device cpu --threads 2 --weight-dtype $w --json > "$out/generate-$w.json"
done
