#!/bin/bash
# Two builds of the packed-code quantized attention side by side in one sitting (used for
# ../quant-threads/, one thread against libtorch's threads, and ../quant-tiles/, before and after
# the tiling): two rounds of `kvbench bench` per binary on SmolLM2 at 4K (alternating which
# binary goes first), then Qwen2.5-0.5B at 16K tokens, full against KIVI-4, with the after
# binary (and KIVI-4 with the before binary).
#   reports/performance/quant-threads/run.sh OUT BEFORE_BIN AFTER_BIN
set -euo pipefail
out=${1:?usage: run.sh OUT BEFORE_BIN AFTER_BIN}
before=${2:?before binary}
after=${3:?after binary}
mkdir -p "$out"
drop() { if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then sync && echo 3 > /proc/sys/vm/drop_caches; fi; }
for round in 1 2; do
  order=(after before)
  [ $round = 2 ] && order=(before after)
  for which in "${order[@]}"; do
    bin=$before; [ $which = after ] && bin=$after
    drop
    "$bin" bench --methods "full,kivi(bits=4),kivi(bits=2),int8" --contexts 4096 --new-tokens 64 \
      --repeats 2 --warmup 1 --threads 2 --device cpu --out "$out/smollm2-4k-$which-$round" > "$out/smollm2-4k-$which-$round.txt" 2>&1
  done
done
drop
"$after" bench --model qwen2.5-0.5b --methods "full,kivi(bits=4)" --contexts 16384 --new-tokens 32 \
  --repeats 1 --warmup 0 --threads 2 --device cpu --out "$out/qwen-16k-after" > "$out/qwen-16k-after.txt" 2>&1
drop
"$before" bench --model qwen2.5-0.5b --methods "kivi(bits=4)" --contexts 16384 --new-tokens 32 \
  --repeats 1 --warmup 0 --threads 2 --device cpu --out "$out/qwen-16k-before" > "$out/qwen-16k-before.txt" 2>&1
