#!/usr/bin/env bash
# The main job (README): installs what is missing, builds, and runs tessera. Until training lands this is
# the self-check: the build, the device, and quick sanity checks on the CPU and (when present) the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
ninja -C build -j"$(nproc)" tessera
exec build/bin/tessera selfcheck "$@"
