#!/usr/bin/env bash
# One build → test → benchmark round on a GPU machine, everything it saw written under $OUT.
# The GPU machine has nvcc, CMake and ninja but not the Debian-packaged libraries; stage them on the
# development machine first and carry them along:
#   bash ../shared/gpu/stage-deps.sh      # writes .deps (ignored by git)
#   (on the GPU machine, from the repository root)  bash tools/gpu_round.sh
# Each step has its own time limit and a failing step does not stop the later ones; summary.txt says
# which steps passed.
set -uo pipefail
out=${OUT:-/tmp/tessera-gpu-round}
mkdir -p "$out"
deps=$PWD/.deps/usr
export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH
summary=$out/summary.txt
: > "$summary"

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  printf '%-14s rc=%-3s %4ss  %s\n' "$name" "$rc" "$((SECONDS - start))" "$*" | tee -a "$summary"
  return $rc
}

{ date -u; git rev-parse HEAD; git status --short | head -20; nvidia-smi; nvcc --version; cmake --version; } \
  > "$out/environment.txt" 2>&1
step configure 120 cmake -S . -B build-gpu -G Ninja -DTESSERA_CUDA=ON -DCMAKE_PREFIX_PATH="$deps" || exit 1
step build 420 ninja -C build-gpu -j16 || { tail -50 "$out/build.log"; exit 1; }
step selfcheck 60 build-gpu/bin/tessera selfcheck
step ctest 300 ctest --test-dir build-gpu -j8 --timeout 240 --output-on-failure
step test_cuda 180 build-gpu/bin/test_cuda --duration=true
step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 1 build-gpu/bin/test_cuda
for b in build-gpu/bin/bench_*; do
  name=$(basename "$b")
  step "$name" 240 "$b" --benchmark_out="$out/$name.json" --benchmark_out_format=json
done
cat "$summary"
