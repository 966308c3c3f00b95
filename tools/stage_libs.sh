#!/usr/bin/env bash
# Adds what the GPU machine's image lacks besides ../shared/gpu/stage-deps.sh's packages to the staged
# third-party tree .deps: libjpeg-turbo (the JPEG decoder) and OpenSSL's libcrypto (SHA-256 of checkpoints
# and data sets) — headers, the unversioned link and the runtime library. stage-deps.sh starts .deps afresh
# without them, so run this after it:
#   bash ../shared/gpu/stage-deps.sh && bash tools/stage_libs.sh [DEST]     # DEST: default .deps
# tools/gpu_round.sh runs it too, where .deps lacks them and this machine has the packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/.deps}
for p in libjpeg62-turbo-dev libjpeg62-turbo libssl-dev libssl3; do
  dpkg -s "$p" > /dev/null 2>&1 || { echo "stage_libs.sh: $p is not installed (bash tools/setup.sh installs it)" >&2; exit 1; }
  # The files dpkg lists, keeping their /usr layout; no static libraries (the build links the .so files) and
  # none of libssl3's engine and provider modules (libcrypto's SHA-256 needs none).
  dpkg -L "$p" | while read -r f; do
    case "$f" in
      *.a|*/engines-3/*|*/ossl-modules/*) ;;
      /usr/include/*|/usr/lib/*)
        if [ -f "$f" ] || [ -L "$f" ]; then mkdir -p "$dest$(dirname "$f")"; cp -a "$f" "$dest$f"; fi ;;
    esac
  done
done
# Debian keeps jpeglib.h's "jconfig.h" and OpenSSL's configuration headers in the multiarch folder
# /usr/include/<triplet>, which the compiler searches only under /usr: put copies where the staged headers'
# includes look first.
cp "$(ls "$dest"/usr/include/*/jconfig.h | head -1)" "$dest/usr/include/jconfig.h"
cp "$(dirname "$(ls "$dest"/usr/include/*/openssl/configuration.h | head -1)")"/*.h "$dest/usr/include/openssl/"
du -sh "$dest" | awk '{print "staged libjpeg-turbo and libcrypto; " $2 " is now " $1}'
