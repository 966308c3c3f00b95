#!/usr/bin/env bash
# Screenshots tessera's HTML pages (a run's report.html, tessera attn's index.html) as headless Chromium
# draws them, so they can be looked at. The tests check the markup; what a reader sees — a figure wider
# than its card, a row of thumbnails out of line — only shows in a browser (both were found this way).
# A developer's tool, not a dependency: Chromium comes from `apt-get install chromium`.
#
#   bash tools/look_at_pages.sh OUT PAGE.html...   # OUT/<k>-<page's folder>.png, 1400 px wide
#   HEIGHT=12000 bash tools/look_at_pages.sh ...    # taller shots for long pages (default 8000 px)
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: bash tools/look_at_pages.sh OUT PAGE.html..." >&2
  exit 2
fi
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [[ -z "$browser" ]]; then
  echo "look_at_pages: no Chromium found (apt-get install chromium)" >&2
  exit 1
fi
out=$1
shift
mkdir -p "$out"
k=0
for page in "$@"; do
  if [[ ! -f "$page" ]]; then
    echo "look_at_pages: $page: no such file" >&2
    exit 1
  fi
  k=$((k + 1))
  shot="$out/$k-$(basename "$(dirname "$(realpath "$page")")").png"
  # --no-sandbox: containers usually run as root, where Chromium's sandbox refuses to start.
  timeout 120 "$browser" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1400,"${HEIGHT:-8000}" --screenshot="$shot" "file://$(realpath "$page")" >/dev/null 2>&1 ||
    { echo "look_at_pages: $page: Chromium failed" >&2; exit 1; }
  echo "$shot"
done
