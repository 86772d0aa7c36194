#!/usr/bin/env bash
# Measures the linear-time models end to end through `kvbench generate` (CPU, f32): prefill time
# at prompts of about 1K, 2K and 4K tokens, decode speed (32 tokens) and the bytes the model keeps
# per sequence, next to SmolLM2-135M with its full KV cache. The linear-time models are random
# weights in the shapes of small published checkpoints (`kvbench model init --random`): speed and
# memory do not depend on the values. Prints a Markdown table.
# Usage: scripts/measure_linear_time.sh [WORK_DIR] (default runs/linear-time); THREADS (default 2);
# PREFILL_CHUNK=N feeds prompts N tokens at a time (each chunk continues from the state / cache).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kvbench="$root/target/release/kvbench"
work=${1:-$root/runs/linear-time}
threads=${THREADS:-2}
mkdir -p "$work/models" "$work/prompts"
json() { python3 -c "import json,sys; d=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }

# Prompts: the README's words, repeated, cut at 470 / 940 / 1,880 words (about 1K/2K/4K tokens).
lengths=(470 940 1880)
for words in "${lengths[@]}"; do
  python3 - "$root/README.md" "$words" > "$work/prompts/$words.txt" <<'EOF'
import sys
words = open(sys.argv[1], encoding="utf-8").read().split()
n = int(sys.argv[2])
print(" ".join((words * (n // len(words) + 1))[:n]))
EOF
done

models=("smollm2-135m|smollm2-135m" "mamba|mamba-130m" "mamba2|mamba2-130m" "rwkv6|169m" "recurrent_gemma|reduced-2b")
echo "| model | shape | prompt tokens | prefill s | prefill ms/token | decode tok/s | bytes kept per sequence | peak RSS while decoding |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for entry in "${models[@]}"; do
  arch=${entry%%|*} preset=${entry#*|}
  if [[ $arch == smollm2-135m ]]; then
    model=smollm2-135m
  else
    model="$work/models/$arch-$preset"
    [[ -e $model/model.safetensors ]] || "$kvbench" model init --arch "$arch" --preset "$preset" --random --seed 1 "$model" >/dev/null
  fi
  for words in "${lengths[@]}"; do
    read -r n pre dec held rss < <("$kvbench" generate --model "$model" --prompt-file "$work/prompts/$words.txt" --device cpu --dtype f32 \
      --threads "$threads" ${PREFILL_CHUNK:+--prefill-chunk "$PREFILL_CHUNK"} --max-new-tokens 32 --min-new-tokens 32 --decode-peak-rss --json 2>/dev/null \
      | json prompt_tokens prefill_seconds decode_tokens_per_s kv_bytes_held peak_rss_decode_bytes)
    python3 -c "
import sys
arch, preset, n, pre, dec, held, rss = sys.argv[1:]
n, pre, dec, held, rss = int(n), float(pre), float(dec), int(held), int(rss)
mib = lambda b: f'{b / 2**20:,.1f} MiB'
print(f'| {arch} | {preset} | {n:,} | {pre:.2f} | {1000 * pre / n:.2f} | {dec:.1f} | {mib(held)} | {mib(rss)} |')
" "$arch" "$preset" "$n" "$pre" "$dec" "$held" "$rss"
  done
done
