#!/bin/bash
# Prefill and decode speed of the two offline-v1 models at the grid's lengths, the input of
# scripts/estimate_offline_v1.py: the paper's passkey prompt at about 2K, 4K, 8K (and, for
# Qwen2.5, 16K) tokens through `kvbench generate` (CPU, 2 threads, f32, full cache, 16 new tokens).
# Prints one line per run: model, prompt tokens, prefill seconds, prefill tokens/s, decode
# tokens/s, the first characters of the answer. reports/offline-v1/rates.txt is its output.
set -euo pipefail
cd "$(dirname "$0")/.."
KVBENCH=${KVBENCH:-./target/release/kvbench}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for m in smollm2-135m qwen2.5-0.5b; do
  for w in 1450 2900 5600 11500; do
    # SmolLM2's context is 8,192 tokens.
    if [ "$m" = smollm2-135m ] && [ "$w" -gt 5600 ]; then continue; fi
    "$KVBENCH" task dump passkey --model "$m" --lengths "$w,$w" --steps 1 --depths 1 2>/dev/null | python3 -c "
import json, sys
d = json.loads(sys.stdin.readline())
open('$tmp/prompt.txt', 'w').write(d['prefix_instruction'] + d['context'] + d['question'])"
    "$KVBENCH" generate --model "$m" --prompt-file "$tmp/prompt.txt" --max-new-tokens 16 --min-new-tokens 16 \
        --device cpu --threads 2 --json 2>/dev/null | tail -1 | python3 -c "
import json, sys
d = json.load(sys.stdin)
print('$m', d['prompt_tokens'], round(d['prefill_seconds'], 2), round(d['prompt_tokens'] / d['prefill_seconds'], 1),
      round(d['decode_tokens_per_s'], 2), repr(d['text'][:20]), flush=True)"
  done
done
