#!/usr/bin/env bash
# Needle demo for the retrieval family: the paper's passkey (7-digit key) in a Paul Graham
# haystack of about 4,096 SmolLM2 tokens, needle at 50% depth, answered by SmolLM2-135M with the
# full cache, StreamingLLM, InfLLM and Quest at ratio 4 (the whole prompt is prefilled, then the
# answer is decoded greedily). Prints one line per method: answer found or not, the generated
# text, and the KV bytes held / attended.
#
# Usage: scripts/measure_retrieval.sh [WORDS]   (default 3000 words: 4,223 tokens; SmolLM2 with the full cache answers it)
# Env: KVBENCH (binary, default target/release/kvbench), THREADS (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
KVBENCH=${KVBENCH:-target/release/kvbench}
THREADS=${THREADS:-2}
WORDS=${1:-3000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$KVBENCH" task dump passkey --lengths "$WORDS" --depths 3 --template plain > "$tmp/samples.jsonl"
answer=$(python3 - "$tmp" <<'EOF'
import json, sys
tmp = sys.argv[1]
samples = [json.loads(l) for l in open(f"{tmp}/samples.jsonl")]
s = next(x for x in samples if x["metadata"]["depth"] == 0.5)
open(f"{tmp}/prompt.txt", "w").write(s["prefix_instruction"] + s["context"] + s["question"])
print(s["answers"][0])
EOF
)
echo "passkey ${answer}, ${WORDS} words of background, needle at 50% depth"

# The last InfLLM line retrieves 25 of the ~26 blocks: it shows the needle is found once its
# block is retrieved (retrieval quality, not the attention over retrieved blocks, decides).
for spec in "full" "streamingllm ratio=4" "infllm ratio=4" "infllm ratio=4 rope_theta=100000" "quest ratio=4" "infllm ratio=4 topk=25"; do
    read -r method params <<< "$spec"
    set_args=()
    for p in ${params:-}; do set_args+=(--set "$p"); done
    "$KVBENCH" generate --method "$method" ${set_args[@]+"${set_args[@]}"} --prompt-file "$tmp/prompt.txt" \
        --max-new-tokens 12 --json --device cpu --threads "$THREADS" > "$tmp/out.json"
    python3 - "$tmp/out.json" "$answer" "$spec" <<'EOF'
import json, sys
o = json.load(open(sys.argv[1]))
found = sys.argv[2] in o["text"]
print(f"{sys.argv[3]:<34} prompt {o['prompt_tokens']} tok  found={found!s:<5} text={o['text']!r:<40} "
      f"held {o['kv_bytes_held']/2**20:.1f} MiB  attended {o['kv_bytes_attended']/2**20:.1f} MiB  "
      f"full {o['kv_bytes_full']/2**20:.1f} MiB  prefill {o['prefill_seconds']:.1f}s  decode {o['decode_tokens_per_s']:.1f} tok/s")
EOF
done
