#!/usr/bin/env bash
# Build → test → sanitize → benchmark → train on a GPU machine, everything it saw written under $OUT.
# The GPU machine has nvcc, CMake and ninja but not the Debian-packaged libraries, nor ../shared; stage
# them on the development machine first and carry them along (both are git-ignored):
#   bash ../shared/gpu/stage-deps.sh                               # writes .deps
#   mkdir -p .data && cp -r ../shared/datasets/brain-tumor-mri .data/   # 38 MB, for the training phase
#   then run, carrying [".deps", ".data"]:   bash tools/gpu_round.sh [PHASE...]
# Phases (default: all, in this order); each fits one 10-minute device call, and build-gpu/ stays on a
# warm machine between calls, so a session can run them one call at a time:
#   build     configure + build everything (-j16)
#   test      selfcheck, every test (CUDA ones included) with per-test timings
#   sanitize  compute-sanitizer memcheck and racecheck over the CUDA test programs
#   bench     every bench_* program (JSON next to its log)
#   pytorch   bench/pytorch_baselines.py: PyTorch's kernels and training step on the same shapes
#   train     short GPU training runs of CvT-13 and ViT-B/16 on the reference data (loss must fall)
# Each step has its own time limit and a failing step does not stop the later ones; summary.txt says
# which steps passed.
set -uo pipefail
out=${OUT:-/tmp/tessera-gpu-round}
mkdir -p "$out"
deps=$PWD/.deps/usr
export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH
summary=$out/summary.txt
touch "$summary"
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(build test sanitize bench pytorch train)

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%-28s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$summary"
  return $rc
}

{ date -u; git rev-parse HEAD; git status --short | head -20; nvidia-smi; nvcc --version; cmake --version; } \
  > "$out/environment.txt" 2>&1

for phase in "${phases[@]}"; do
  case "$phase" in
    build)
      step configure 120 cmake -S . -B build-gpu -G Ninja -DTESSERA_CUDA=ON -DCMAKE_PREFIX_PATH="$deps" || exit 1
      step build 480 ninja -C build-gpu -j16 || { tail -50 "$out/build.log"; exit 1; } ;;
    test)
      step selfcheck 60 build-gpu/bin/tessera selfcheck
      step ctest 420 ctest --test-dir build-gpu -j8 --timeout 300 --output-on-failure
      for t in build-gpu/bin/test_cuda*; do step "$(basename "$t")" 300 "$t" --duration=true; done ;;
    sanitize)
      for t in build-gpu/bin/test_cuda*; do
        step "memcheck_$(basename "$t")" 300 compute-sanitizer --tool memcheck --error-exitcode 1 "$t"
        step "racecheck_$(basename "$t")" 300 compute-sanitizer --tool racecheck --error-exitcode 1 "$t"
      done ;;
    bench)
      # bench_loader reads the data set: the carried copy (its 16-core number must outrun training).
      [ -d .data/brain-tumor-mri ] && export TESSERA_DATASET=$PWD/.data/brain-tumor-mri
      for b in build-gpu/bin/bench_*; do
        name=$(basename "$b")
        step "$name" 240 "$b" --benchmark_out="$out/$name.json" --benchmark_out_format=json
      done
      ;;
    pytorch)
      step pytorch_kernels 420 python3 bench/pytorch_baselines.py --sections attention,layernorm,conv,adamw \
        --out "$out/pytorch_kernels.json"
      step pytorch_step 540 python3 bench/pytorch_baselines.py --sections step --out "$out/pytorch_step.json" ;;
    train)
      data=.data/brain-tumor-mri
      [ -d "$data" ] || { echo "train: no $data (see the header)" | tee -a "$summary"; continue; }
      step train_cvt13 300 build-gpu/bin/tessera train --device cuda --recipe default --data "$data" --epochs 3 \
        --out "$out/run-cvt13" --no-progress
      step train_vit_b16 300 build-gpu/bin/tessera train --device cuda --recipe default --model vit-b16 --data "$data" \
        --epochs 2 --out "$out/run-vit-b16" --no-progress
      rm -rf "$out"/run-*/checkpoint-epoch-* ;;  # weights are too large to bring back; metrics and reports stay
    *) echo "unknown phase '$phase' (build, test, sanitize, bench, pytorch, train)" >&2; exit 2 ;;
  esac
done
cat "$summary"
