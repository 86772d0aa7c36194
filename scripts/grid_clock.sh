#!/usr/bin/env bash
# Appends the wall clock and a run directory's progress (finished cells, records written) to a
# log every N seconds while a grid runs, so a run carried across sittings has a measured cost:
# the first and last line of each sitting bound its wall time.
#   scripts/grid_clock.sh RUN_DIR LOG [SECONDS]
set -euo pipefail
run="$1"; log="$2"; every="${3:-300}"
while true; do
  cells=$(find "$run/cells" -name done 2>/dev/null | wc -l)
  records=$(cat "$run"/cells/*/records.jsonl 2>/dev/null | wc -l)
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(basename "$run") cells_done=$cells records=$records" >>"$log"
  pgrep -f "kvbench run .*--out $run" >/dev/null || { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $(basename "$run") no kvbench run is writing it; clock stops" >>"$log"; exit 0; }
  sleep "$every"
done
