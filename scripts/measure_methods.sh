#!/usr/bin/env bash
# Measures every eviction method at one budget on one prompt: held/full KV bytes after the prompt
# and at the end, decoding's peak RSS and the RSS at the end. Prints a Markdown table (README).
# Usage: scripts/measure_methods.sh PROMPT_FILE [RATIO] [NEW_TOKENS]
# METHODS="full keydiff chunkkv" measures those instead of the default list.
set -euo pipefail
prompt=${1:?prompt file}; ratio=${2:-4}; new=${3:-32}
kvbench="$(dirname "$0")/../target/release/kvbench"
echo "| method | prompt tokens | held / full after prompt | held / full at end | decode peak RSS | RSS at end |"
echo "|---|---:|---:|---:|---:|---:|"
if [ -n "${METHODS:-}" ]; then read -r -a methods <<<"$METHODS"; else
  methods=(full random streamingllm h2o "h2o mode=prefill" snapkv pyramidkv tova knorm adakv); fi
for m in "${methods[@]}"; do
  name=${m%% *}; args=(--method "$name")
  [ "$name" != full ] && args+=(--set "ratio=$ratio")
  [ "$m" != "$name" ] && args+=(--set "${m#* }")
  "$kvbench" generate --device cpu --kv-dtype f32 --threads 2 --prompt-file "$prompt" \
    --max-new-tokens "$new" --min-new-tokens "$new" "${args[@]}" --decode-peak-rss --json 2>/dev/null |
  python3 -c '
import json, sys
d = json.load(sys.stdin)
mb = lambda b: "{:,.0f} MiB".format(b / 2**20)
row = [sys.argv[1], "{:,}".format(d["prompt_tokens"]),
       "{:.4f}".format(d["kv_bytes_held_prompt"] / d["kv_bytes_full_prompt"]),
       "{:.4f}".format(d["kv_bytes_held"] / d["kv_bytes_full"]),
       mb(d["peak_rss_decode_bytes"]), mb(d["rss_end_bytes"])]
print("| " + " | ".join(row) + " |")
' "$m"
done
