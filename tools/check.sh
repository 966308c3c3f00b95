#!/usr/bin/env bash
# The test command (README, .ci/run): installs what is missing, builds, runs every test, then builds the
# CPU code again under AddressSanitizer + UndefinedBehaviorSanitizer and runs the tests there too, then
# builds the libraries with clang for libFuzzer and runs each fuzzer, time-boxed (tests/fuzz/).
# Without a GPU the CUDA code is still compiled and linked; CUDA tests skip and say why.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

bash tools/setup.sh

echo "== build (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > build-configure.log 2>&1 || { cat build-configure.log; exit 1; }
rm -f build-configure.log
ninja -C build -j"$jobs"
echo "== tests (build/)"
ctest --test-dir build -j"$jobs" --timeout 600 --output-on-failure

echo "== build (build-sanitize/: ASan + UBSan, CPU only)"
cmake -S . -B build-sanitize -G Ninja -DTESSERA_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
ninja -C build-sanitize -j"$jobs"
echo "== tests (build-sanitize/)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0 \
  ctest --test-dir build-sanitize -j"$jobs" --timeout 900 --output-on-failure

echo "== build (build-fuzz/: clang, ASan + UBSan + libFuzzer: the libraries and tests/fuzz/)"
cmake -S . -B build-fuzz -G Ninja -DTESSERA_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang > /dev/null
ninja -C build-fuzz -j"$jobs"
echo "== fuzzers (build-fuzz/)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  LSAN_OPTIONS=suppressions=$PWD/tests/lsan.supp:print_suppressions=0 \
  ctest --test-dir build-fuzz -j"$jobs" --output-on-failure
