#!/bin/bash
# Grid throughput, shared vs --isolated, side by side in one sitting: the offline-v1 probe grid
# (configs/experiments/offline-v1/probe-grid-smollm2-135m.toml, one sample per task, the same one in every
# cell: the cells of scripts/offline_v1_probe.sh) run task by task, each task twice, once shared
# (one prefill per prompt for the methods whose prefill is plain full attention, every cell of
# the sample decoded in one batch) and once with --isolated (every cell alone, as before),
# alternating which goes first. Prints the wall time of each, the speed-up, and whether every
# record's quality and bytes fields are equal (predictions, scores, token counts, KV bytes,
# ratios; time and memory fields are the only ones allowed to differ).
#   scripts/bench_grid_throughput.sh OUT [TASK...]   (default: all ten tasks of the grid)
# Writes OUT/<task>-{shared,isolated}/ (run directories) and OUT/throughput.md (the table).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/bench_grid_throughput.sh OUT [TASK...]}
shift
tasks=("$@")
if [ ${#tasks[@]} -eq 0 ]; then
  tasks=(passkey-8k ruler-niah-2k ruler-niah-4k ruler-vt-2k ruler-vt-4k ruler-cwe-2k ruler-cwe-4k retrieval-sotu-2k count-sotu-2k code-2k)
fi
mkdir -p "$out"
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r configs "$tree/"
cargo build --release -p kvbench --quiet
bin=target/release/kvbench
exp="$tree/configs/experiments/offline-v1/probe-grid-smollm2-135m.toml"
table="$out/throughput.md"
{
  echo "| task | cells | shared (s) | isolated (s) | speed-up | quality and bytes |"
  echo "| ---- | ----: | ---------: | -----------: | -------: | ----------------- |"
} > "$table"
i=0
for t in "${tasks[@]}"; do
  printf '\n# probe: 1 of the 400 samples (the same one in every cell)\nfraction = 0.0025\n' >> "$tree/configs/tasks/$t.toml"
  one="$tree/configs/experiments/offline-v1/$t.toml"
  sed -e "s/^name = .*/name = \"throughput-$t\"/" -e "s/^tasks = .*/tasks = [\"$t\"]/" "$exp" > "$one"
  order=(shared isolated)
  if [ $((i % 2)) -eq 1 ]; then order=(isolated shared); fi
  declare -A secs
  for mode in "${order[@]}"; do
    dir="$out/$t-$mode"
    rm -rf "$dir"
    flag=()
    if [ "$mode" = isolated ]; then flag=(--isolated); fi
    # Each process starts from the same memory state: as root, the page cache is dropped first
    # (on this machine kind a large page cache made the shared run's first-touch page faults,
    # 25 methods' copies of one prompt's K/V, cost up to 2x the shared prefill).
    if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
      sync && echo 3 > /proc/sys/vm/drop_caches
    fi
    start=$(date +%s.%N)
    "$bin" run "$one" --out "$dir" --threads 2 --device cpu --no-report "${flag[@]}" > "$out/$t-$mode.log" 2>&1
    end=$(date +%s.%N)
    secs[$mode]=$(python3 -c "print(f'{$end - $start:.1f}')")
    echo "$t $mode: ${secs[$mode]} s" >&2
  done
  cells=$(ls "$out/$t-shared/cells" | wc -l)
  same=$(python3 - "$out/$t-shared" "$out/$t-isolated" <<'EOF'
import json, os, sys
TIMING = {"prefill_seconds", "decode_tokens_per_s", "peak_memory_bytes", "prompt_compression_seconds", "timing"}
def recs(run):
    out = {}
    for c in sorted(os.listdir(os.path.join(run, "cells"))):
        with open(os.path.join(run, "cells", c, "records.jsonl")) as f:
            out[c] = [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in f if l.strip()]
    return out
a, b = recs(sys.argv[1]), recs(sys.argv[2])
diff = [c for c in sorted(set(a) | set(b)) if a.get(c) != b.get(c)]
print("identical" if not diff else f"DIFFER in {len(diff)} cell(s): {', '.join(diff[:5])}")
EOF
)
  speedup=$(python3 -c "print(f'{${secs[isolated]} / ${secs[shared]}:.2f}x')")
  echo "| $t | $cells | ${secs[shared]} | ${secs[isolated]} | $speedup | $same |" >> "$table"
  unset secs
  i=$((i + 1))
done
python3 - "$table" <<'EOF'
import sys
rows = [l.split("|")[1:-1] for l in open(sys.argv[1]).read().splitlines()[2:]]
cells = sum(int(r[1]) for r in rows)
s = sum(float(r[2]) for r in rows)
iso = sum(float(r[3]) for r in rows)
ok = all(r[5].strip() == "identical" for r in rows)
with open(sys.argv[1], "a") as f:
    f.write(f"| **all** | {cells} | {s:.1f} | {iso:.1f} | {iso / s:.2f}x | {'identical' if ok else 'DIFFER'} |\n")
EOF
cat "$table"
