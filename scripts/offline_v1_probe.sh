#!/bin/bash
# The offline-v1 cost probe: the SmolLM2 half of the grid (configs/experiments/offline-v1/) with
# one of each task's 400 samples, the same one in every cell (a task `fraction` of 0.0025, chosen
# by a seeded hash of the sample id, so every probe score is the score the full run gives that
# sample). It runs every method and budget on every task on the real model (a smoke test of the
# whole grid) and measures what each costs; scripts/estimate_offline_v1.py turns that into the
# grid's compute bill. About 75 minutes on 2 CPU cores.
#   scripts/offline_v1_probe.sh [OUT]   (default runs/offline-v1-probe-smollm2-135m)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/offline-v1-probe-smollm2-135m}
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
cp -r configs "$tree/"
for t in passkey-8k ruler-niah-2k ruler-niah-4k ruler-vt-2k ruler-vt-4k ruler-cwe-2k ruler-cwe-4k retrieval-sotu-2k count-sotu-2k code-2k; do
  printf '\n# probe: 1 of the 400 samples (the same one in every cell)\nfraction = 0.0025\n' >> "$tree/configs/tasks/$t.toml"
done
sed -i 's/^name = "offline-v1-probe-grid-smollm2-135m"/name = "offline-v1-probe-smollm2-135m"/' "$tree/configs/experiments/offline-v1/probe-grid-smollm2-135m.toml"
./kvbench run "$tree/configs/experiments/offline-v1/probe-grid-smollm2-135m.toml" --out "$out" --threads 2 --device cpu
