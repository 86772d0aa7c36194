#!/usr/bin/env bash
# Peak memory during prefill: compress after prefill vs compress during prefill (`block_size`).
# For each method setting: the prompt's own peak RSS (from after the model load: weights,
# activations and cache; `generate --prefill-peak-rss`), held/full KV bytes after the prompt and
# prefill speed, the prompt fed in engine chunks of CHUNK tokens. Prints a Markdown table (README).
# Usage: scripts/measure_prefill_memory.sh PROMPT_FILE [CHUNK] ["method key=value ..." ...]
set -euo pipefail
prompt=${1:?prompt file}; chunk=${2:-512}; shift $(( $# >= 2 ? 2 : $# ))
kvbench="$(dirname "$0")/../target/release/kvbench"
if [ $# -gt 0 ]; then settings=("$@"); else
  settings=("full" "snapkv ratio=8" "snapkv ratio=8 block_size=$chunk" "keydiff ratio=8" "keydiff ratio=8 block_size=$chunk"); fi
echo "| method | settings | prompt tokens | held / full after prompt | prefill peak RSS | prefill tok/s |"
echo "|---|---|---:|---:|---:|---:|"
for m in "${settings[@]}"; do
  read -r -a words <<<"$m"
  args=(--method "${words[0]}")
  for kv in "${words[@]:1}"; do args+=(--set "$kv"); done
  "$kvbench" generate --device cpu --kv-dtype f32 --threads 2 --prompt-file "$prompt" --prefill-chunk "$chunk" \
    --max-new-tokens 1 "${args[@]}" --prefill-peak-rss --json 2>/dev/null |
  python3 -c '
import json, sys
d = json.load(sys.stdin)
words = sys.argv[1].split()
row = [words[0], " ".join(words[1:]) or "–", "{:,}".format(d["prompt_tokens"]),
       "{:.4f}".format(d["kv_bytes_held_prompt"] / d["kv_bytes_full_prompt"]),
       "{:,.0f} MiB".format(d["peak_rss_prefill_bytes"] / 2**20), "{:.1f}".format(d["prefill_tokens_per_s"])]
print("| " + " | ".join(row) + " |")
' "$m"
done
