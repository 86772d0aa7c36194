#!/usr/bin/env bash
# Measures the quantized caches on the default model (SmolLM2-135M, CPU, 2 threads):
#  1. held KV bytes after a ~4,096-token prompt against a 16-bit full cache (--kv-dtype bf16) and
#     against an f32 cache;
#  2. decode tokens/s at that context (f32 compute and cache), 32 tokens, against `full`;
#  3. perplexity of tokens 2,049..3,072 of the Paul Graham essays fed token by token after a
#     2,048-token prefill (`kvbench perplexity`), f32 cache.
# Prints Markdown tables. Usage: scripts/measure_quant.sh PROMPT_FILE_OF_ABOUT_4096_TOKENS
# SECTIONS="bytes speed ppl" (default all) picks tables; run it on an otherwise idle machine.
set -euo pipefail
prompt=${1:?a prompt file of about 4,096 tokens}
kvbench="$(dirname "$0")/../target/release/kvbench"
sections=${SECTIONS:-bytes speed ppl}
methods=("full" "kivi bits=2" "kivi bits=4" "flexgen bits=4" "flexgen bits=4 fake=true" "int8" "int4" "snapkv ratio=4 storage={method=\"kivi\",bits=2}")
args_of() { local m=$1 name=${1%% *}; echo "--method $name"; [ "$m" != "$name" ] && for kv in ${m#* }; do echo "--set $kv"; done; true; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }

if [[ $sections == *bytes* ]]; then
echo "### Held KV bytes after the prompt"
echo
echo "| method | prompt tokens | ratio vs bf16 full | ratio vs f32 full |"
echo "|---|---:|---:|---:|"
for m in "${methods[@]}"; do
  mapfile -t a < <(args_of "$m")
  read -r n r16 < <("$kvbench" generate --device cpu --threads 2 --kv-dtype bf16 --prompt-file "$prompt" --max-new-tokens 1 ${a[@]} --json 2>/dev/null | json prompt_tokens compression_ratio_prompt)
  read -r r32 < <("$kvbench" generate --device cpu --threads 2 --kv-dtype f32 --prompt-file "$prompt" --max-new-tokens 1 ${a[@]} --json 2>/dev/null | json compression_ratio_prompt)
  printf '| %s | %s | %.3f | %.3f |\n' "$m" "$n" "$r16" "$r32"
done
fi
if [[ $sections == *speed* ]]; then
echo
echo "### Decode speed at that context (f32, 32 new tokens, median of 3)"
echo
echo "| method | decode tok/s | vs full | prefill tok/s |"
echo "|---|---:|---:|---:|"
full_speed=""
for m in "${methods[@]}"; do
  mapfile -t a < <(args_of "$m")
  speeds=(); pre=()
  for _ in 1 2 3; do
    read -r d p < <("$kvbench" generate --device cpu --threads 2 --prompt-file "$prompt" --max-new-tokens 32 --min-new-tokens 32 ${a[@]} --json 2>/dev/null | json decode_tokens_per_s prefill_tokens_per_s)
    speeds+=("$d"); pre+=("$p")
  done
  d=$(printf '%s\n' "${speeds[@]}" | sort -g | sed -n 2p); p=$(printf '%s\n' "${pre[@]}" | sort -g | sed -n 2p)
  [ -z "$full_speed" ] && full_speed=$d
  printf '| %s | %.2f | %.2f | %.0f |\n' "$m" "$d" "$(python3 -c "print($d/$full_speed)")" "$p"
done
fi
if [[ $sections == *ppl* ]]; then
echo
echo "### Perplexity (PG essays, 1,024 tokens scored one by one after a 2,048-token prefill, f32 cache)"
echo
echo "| method | perplexity | vs full | KV held at end / full |"
echo "|---|---:|---:|---:|"
full_ppl=""
for m in "${methods[@]}"; do
  mapfile -t a < <(args_of "$m")
  read -r ppl held fullb < <("$kvbench" perplexity --device cpu --threads 2 --tokens 3072 --prefill 2048 --step 1 ${a[@]} --json 2>/dev/null | json perplexity kv_bytes_held kv_bytes_full)
  [ -z "$full_ppl" ] && full_ppl=$ppl
  printf '| %s | %.4f | %+.2f%% | %.3f |\n' "$m" "$ppl" "$(python3 -c "print(100*($ppl/$full_ppl-1))")" "$(python3 -c "print($held/$fullb)")"
done
fi
