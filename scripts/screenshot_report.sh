#!/usr/bin/env bash
# Renders a report directory's index.html (or another page of it) headless to a PNG, to check
# its layout by eye.
#   scripts/screenshot_report.sh REPORT_DIR OUT.png [PAGE.html] [WIDTHxHEIGHT]
# Needs chromium (Debian: apt-get install chromium).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 REPORT_DIR OUT.png [PAGE.html (default index.html)] [WIDTHxHEIGHT (default 1400x2400)]" >&2
    exit 2
fi
report_dir=$1
out=$2
page=${3:-index.html}
size=${4:-1400x2400}
browser=""
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
if [ -z "$browser" ]; then
    echo "error: chromium not found (apt-get install chromium)" >&2
    exit 1
fi
file=$(cd "$report_dir" && pwd)/$page
if [ ! -f "$file" ]; then
    echo "error: $file does not exist" >&2
    exit 1
fi
case $out in /*) ;; *) out=$PWD/$out ;; esac
mkdir -p "$(dirname "$out")"
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$out" --window-size="${size/x/,}" "file://$file" 2>/dev/null
[ -s "$out" ] || { echo "error: no screenshot written" >&2; exit 1; }
echo "$out"
