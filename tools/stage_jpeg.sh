#!/usr/bin/env bash
# Adds libjpeg-turbo (headers, libjpeg.so and its runtime library) to the staged third-party tree .deps,
# for the GPU machine, whose image has no libjpeg headers. ../shared/gpu/stage-deps.sh starts .deps afresh
# without it, so run this after it:
#   bash ../shared/gpu/stage-deps.sh && bash tools/stage_jpeg.sh [DEST]     # DEST: default .deps
# tools/gpu_round.sh runs it too, where .deps lacks libjpeg and this machine has the packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/.deps}
for p in libjpeg62-turbo-dev libjpeg62-turbo; do
  dpkg -s "$p" > /dev/null 2>&1 || { echo "stage_jpeg.sh: $p is not installed (bash tools/setup.sh installs it)" >&2; exit 1; }
  # The files dpkg lists, keeping their /usr layout; not the static library (the build links libjpeg.so).
  dpkg -L "$p" | while read -r f; do
    case "$f" in
      *.a) ;;
      /usr/include/*|/usr/lib/*)
        if [ -f "$f" ] || [ -L "$f" ]; then mkdir -p "$dest$(dirname "$f")"; cp -a "$f" "$dest$f"; fi ;;
    esac
  done
done
# jpeglib.h includes "jconfig.h", which Debian keeps in the multiarch folder /usr/include/<triplet>: the
# compiler searches that folder only under /usr, so put a copy beside jpeglib.h, where "" includes look first.
cp "$(ls "$dest"/usr/include/*/jconfig.h | head -1)" "$dest/usr/include/jconfig.h"
du -sh "$dest" | awk '{print "staged libjpeg-turbo; " $2 " is now " $1}'
