#!/usr/bin/env bash
# The main job (README): installs what is missing, builds, and trains CvT on the reference data set.
#   With a GPU the models can use: the default recipe, a from-scratch CvT-13 (train/trainer.cpp).
#   Otherwise: the cpu recipe, a from-scratch CvT for the CPU (cvt-tiny at 64 px, 40 epochs), under 10 minutes
#   on 2 cores.
# Either way the run directory ends with report.html, confusion_matrix.png, metrics.jsonl and the best
# checkpoint. A new run never overwrites an old one: it goes to runs/main, or when that holds a run already,
# to the first free runs/main-2, runs/main-3, ... (OUT=DIR chooses it; tessera refuses one that holds a run).
# Extra arguments go to `tessera train` (e.g. --epochs 3, --recipe study --weights DIR).
# Without the data set at DATA (default ../shared/datasets/brain-tumor-mri) it says where to get it and
# trains on a synthetic 4-class set instead, saying so loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/datasets/brain-tumor-mri}
if [ -z "${OUT:-}" ]; then
  OUT=runs/main n=1
  # what `tessera train` takes for a run: run.json, or the last link
  while [ -e "$OUT/run.json" ] || [ -L "$OUT/last" ]; do n=$((n + 1)); OUT=runs/main-$n; done
fi

bash tools/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > /dev/null
ninja -C build -j"$(nproc)" tessera

recipe=cpu
if build/bin/tessera --version | grep -q '^CUDA: built, device' && build/bin/tessera --version | grep -q '^models on CUDA: yes'; then
  recipe=default
fi
data_args=(--data "$DATA")
if [ ! -d "$DATA/Training" ] || [ ! -d "$DATA/Testing" ]; then
  cat >&2 <<MSG

  ****************************************************************************************************
  *  The brain-tumour MRI data set is not at $DATA
  *  Get it from https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet (Training/ and
  *  Testing/ folders) and run again with DATA=/path/to/it bash tools/run.sh
  *  NOW TRAINING ON A SYNTHETIC 4-CLASS SET INSTEAD (discs, rings, stripes, checkerboards — NOT MRI).
  ****************************************************************************************************

MSG
  data_args=(--synthetic)
fi
echo "tessera: training with --recipe $recipe into $OUT" >&2
exec build/bin/tessera train --recipe "$recipe" "${data_args[@]}" --out "$OUT" "$@"
