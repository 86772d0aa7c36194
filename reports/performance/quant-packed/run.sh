#!/bin/bash
# Quantized caches' decoding, packed-code kernel vs libtorch, side by side in one sitting:
# two rounds, each running `kvbench bench` once per path (alternating which goes first), same
# binary, KVBENCH_QUANT_ATTEND=libtorch selecting the libtorch path.
#   reports/performance/quant-packed/run.sh OUT
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=${1:?usage: run.sh OUT}
mkdir -p "$out"
bin=target/release/kvbench
for round in 1 2; do
  order=(packed libtorch)
  [ $round = 2 ] && order=(libtorch packed)
  for mode in "${order[@]}"; do
    if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/drop_caches ]; then sync && echo 3 > /proc/sys/vm/drop_caches; fi
    [ $mode = libtorch ] && export KVBENCH_QUANT_ATTEND=libtorch || unset KVBENCH_QUANT_ATTEND
    "$bin" bench --methods "full,kivi(bits=4),kivi(bits=2),int8" --contexts 4096 --new-tokens 64 \
      --repeats 3 --warmup 1 --threads 2 --device cpu --out "$out/$mode-$round" > "$out/$mode-$round.txt" 2>&1
  done
done
unset KVBENCH_QUANT_ATTEND
