#!/usr/bin/env bash
# End-to-end checks of the `tessera` command-line program: exit codes, output, and error lines.
# Usage: tests/cli_test.sh PATH/TO/tessera SCRATCH_DIR
# Needs only bash and coreutils (test files are written with printf). Exits 1 if any check fails.
set -u
BIN=${1:?usage: cli_test.sh PATH/TO/tessera SCRATCH_DIR}
DIR=${2:?usage: cli_test.sh PATH/TO/tessera SCRATCH_DIR}
mkdir -p "$DIR" || exit 1
OUT="$DIR/stdout" ERR="$DIR/stderr"
failures=0

fail() { echo "FAIL: $*"; echo "  --- stdout:"; sed 's/^/  /' "$OUT"; echo "  --- stderr:"; sed 's/^/  /' "$ERR"; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }
run() { "$BIN" "$@" >"$OUT" 2>"$ERR"; rc=$?; }
# expect_out NAME PATTERN...: every extended regex must match some line of stdout.
expect_out() {
  local name=$1; shift
  for pat in "$@"; do grep -Eq -- "$pat" "$OUT" || { fail "$name: stdout lacks /$pat/"; return; }; done
  pass "$name"
}
# expect_error NAME FILE_OR_WORD: exit 1, nothing on stdout, exactly one stderr line
# "tessera: error: ..." that mentions FILE_OR_WORD.
expect_error() {
  local name=$1 word=$2
  if [ "$rc" -ne 1 ]; then fail "$name: exit code $rc, expected 1"; return; fi
  if [ -s "$OUT" ]; then fail "$name: unexpected stdout"; return; fi
  if [ "$(wc -l <"$ERR")" -ne 1 ]; then fail "$name: stderr is not exactly one line"; return; fi
  if ! grep -q '^tessera: error: ' "$ERR"; then fail "$name: stderr does not start with 'tessera: error: '"; return; fi
  if ! grep -qF -- "$word" "$ERR"; then fail "$name: stderr does not mention $word"; return; fi
  pass "$name"
}

# ---- a valid file, written byte by byte: 8-byte little-endian header length | JSON header | data
header='{"__metadata__":{"format":"pt"},"bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"weight":{"dtype":"BF16","shape":[2,2],"data_offsets":[8,16]}}'
while [ $(( ${#header} % 8 )) -ne 0 ]; do header="$header "; done  # writers pad the header with spaces
n=${#header}
le64() { local v=$1 i; for i in 0 1 2 3 4 5 6 7; do printf "\\x$(printf %02x $(( (v >> (8 * i)) & 255 )))"; done; }
VALID="$DIR/valid.safetensors"
{
  le64 "$n"
  printf '%s' "$header"
  printf '\x00\x00\x80\x3f\x00\x00\x00\xc0'  # bias: 1.0, -2.0 (f32)
  printf '\x80\x3f\x00\x40\x40\x40\x80\x40'  # weight: 1, 2, 3, 4 (bf16)
} >"$VALID"

# ---- --version, --help
run --version
if [ "$rc" -eq 0 ]; then expect_out "--version" '^tessera [0-9]+\.[0-9]+\.[0-9]+$' '^CUDA: '; else fail "--version: exit code $rc"; fi
run --help
if [ "$rc" -eq 0 ]; then expect_out "--help" 'inspect' 'selfcheck'; else fail "--help: exit code $rc"; fi
run inspect --help
if [ "$rc" -eq 0 ]; then expect_out "inspect --help" '--json'; else fail "inspect --help: exit code $rc"; fi

# ---- inspect: table and JSON
run inspect "$VALID"
if [ "$rc" -eq 0 ]; then
  expect_out "inspect table" '^name +dtype +shape +elements +bytes$' '^bias +F32 +\[2\] +2 +8$' \
    '^weight +BF16 +\[2, 2\] +4 +8$' '^tensors: +2$' '^parameters: +6$' '^bytes: +16 ' 'format: pt'
else fail "inspect: exit code $rc"; fi
run inspect "$VALID" --json
if [ "$rc" -eq 0 ]; then
  expect_out "inspect --json" '^\{' '^\}$' '"name": "bias"' '"name": "weight"' '"dtype": "BF16"' \
    '"parameters": 6' '"bytes": 16' '"tensors": 2' '"format": "pt"'
  [ -s "$ERR" ] && fail "inspect --json: unexpected stderr"
else fail "inspect --json: exit code $rc"; fi

# ---- inspect: malformed and missing files exit 1 with one error line naming the file
TRUNC="$DIR/truncated.safetensors"; head -c 20 "$VALID" >"$TRUNC"
run inspect "$TRUNC"; expect_error "inspect truncated file" "$TRUNC"
SHORT="$DIR/short.safetensors"; head -c 5 "$VALID" >"$SHORT"
run inspect "$SHORT"; expect_error "inspect 5-byte file" "$SHORT"
CUT="$DIR/cut-data.safetensors"; head -c $(( 8 + n + 10 )) "$VALID" >"$CUT"
run inspect "$CUT"; expect_error "inspect file with its data cut short" "$CUT"
GARBAGE="$DIR/garbage.safetensors"; printf 'this is not a safetensors file at all\n' >"$GARBAGE"
run inspect "$GARBAGE"; expect_error "inspect garbage" "$GARBAGE"
BADJSON="$DIR/badjson.safetensors"; { le64 9; printf '{"a":\n[1,'; } >"$BADJSON"
run inspect "$BADJSON"; expect_error "inspect header that is not JSON" "$BADJSON"
MISSING="$DIR/does-not-exist.safetensors"; rm -f "$MISSING"
run inspect "$MISSING"; expect_error "inspect missing file" "$MISSING"
run inspect "$MISSING" --json; expect_error "inspect --json missing file" "$MISSING"
run inspect "$DIR"; expect_error "inspect a folder" "$DIR"

# ---- usage errors
run frobnicate; expect_error "unknown subcommand" "frobnicate"
run inspect "$VALID" --bogus; expect_error "unknown option" "--bogus"
run; expect_error "no subcommand" "subcommand"

# ---- selfcheck: the sanity checks all pass
run selfcheck
if [ "$rc" -eq 0 ]; then expect_out "selfcheck" '^tessera ' 'PASS +matmul' 'PASS +autograd' 'PASS +safetensors'
else fail "selfcheck: exit code $rc"; fi
if grep -q FAIL "$OUT"; then fail "selfcheck printed FAIL"; fi

# ---- predict and inspect on a real (tiny, random) CvT checkpoint written by transformers
# (tools/make_cli_fixture.py); expected.json holds the logits transformers computed for the same PNG.
FIX=$(cd "$(dirname "$0")" && pwd)/fixtures
TINY="$FIX/models/tiny-cvt"
PNG="$FIX/preprocess/rgb_37x23.png"
run inspect "$TINY/model.safetensors"
if [ "$rc" -eq 0 ]; then expect_out "inspect recognises a CvT checkpoint" '^model: +CvT, custom configuration' '4 classes'
else fail "inspect tiny-cvt: exit code $rc"; fi
run predict --weights "$TINY/model.safetensors" --top 2 "$PNG"
if [ "$rc" -eq 0 ]; then expect_out "predict table" "rgb_37x23.png" '^  0\.[0-9]{4}  (glioma|meningioma|no|pituitary)_tumor$'
else fail "predict: exit code $rc"; fi
run predict --weights "$TINY/model.safetensors" --json "$PNG"
if [ "$rc" -eq 0 ]; then
  # Logits within 1e-5 of transformers': both compute in fp32 from identical pixels (PNG decoding and the
  # Pillow-exact resize are bit-exact), so only summation order differs (~1e-7 here).
  got=$(tr -d ' \n' <"$OUT" | sed 's/.*"logits":\[\([^]]*\)\].*/\1/')
  want=$(tr -d ' \n' <"$TINY/expected.json" | sed 's/.*"logits":\[\([^]]*\)\].*/\1/')
  if awk -v g="$got" -v w="$want" 'BEGIN { n = split(g, a, ","); m = split(w, b, ",");
        if (n != 4 || m != 4) exit 1; for (i = 1; i <= n; i++) { d = a[i] - b[i]; if (d < 0) d = -d; if (d > 1e-5) exit 1 } }'; then
    pass "predict --json logits match transformers"
  else fail "predict --json logits [$got] vs transformers [$want]"; fi
else fail "predict --json: exit code $rc"; fi
run predict --weights "$DIR/none.safetensors" --model cvt-13 "$PNG"; expect_error "predict missing weights" "none.safetensors"
run predict --weights "$VALID" --model cvt-13 "$PNG"; expect_error "predict wrong checkpoint" "$VALID"
run predict --weights "$TINY/model.safetensors" --model vit-b16 "$PNG"; expect_error "predict CvT weights as ViT" "model.safetensors"
head -c 50000 "$TINY/model.safetensors" >"$DIR/model-truncated.safetensors"
run predict --weights "$DIR/model-truncated.safetensors" --model cvt-13 "$PNG"; expect_error "predict truncated checkpoint" "model-truncated.safetensors"
run predict --weights "$TINY/model.safetensors" "$DIR/missing.png"; expect_error "predict missing image" "missing.png"
run predict --weights "$TINY/model.safetensors" --device tpu "$PNG"; expect_error "predict bad device" "tpu"

# tessera bench: a small training step runs and reports what its JSON promises; bad options name themselves.
run bench train --model cvt-tiny --batch 2 --image-size 32 --steps 2 --warmup 1 --threads 1 --json
if [ "$rc" -eq 0 ]; then
  expect_out "bench train --json" '^\{.*\}$' '"mode":"train"' '"threads":1' '"batch":2' '"step_seconds_median":[0-9.e-]+' \
    '"images_per_second":[0-9.e+-]+' '"gflops_per_second":' '"peak_memory_bytes":[1-9]' '"forward_flops_per_image":[1-9]' \
    '"model_type":"cvt"'
  [ "$(wc -l <"$OUT")" -eq 1 ] || fail "bench --json prints more than one line"
else fail "bench train --json: exit code $rc"; fi
run bench infer --model cvt-tiny --batch 2 --image-size 32 --steps 1 --warmup 0 --profile
if [ "$rc" -eq 0 ]; then expect_out "bench --profile tables" '^op family' '^cvt\.encoder\.stages\.0\.layers\.0 ' '^linear '
else fail "bench --profile: exit code $rc"; fi
run bench fly --model cvt-tiny; expect_error "bench bad mode" "fly"
run bench train --model cvt-tiny --batch 0; expect_error "bench bad batch" "--batch"
run bench train --model cvt-99; expect_error "bench unknown model" "cvt-99"
run bench train --model cvt-tiny --batch 2 --image-size 32 --steps 1 --warmup 0 --precision bf16 --json
if [ "$rc" -eq 0 ]; then expect_out "bench bf16 on the CPU" '"precision":"bf16"' '"device":"cpu"'
else fail "bench bf16 on the CPU: exit code $rc"; fi
run bench train --model cvt-tiny --precision fp8; expect_error "bench bad precision" "fp8"

# tessera attn: the tiny CvT's attention probabilities (stage 1 and the last layer) and the rollout map of its
# last stage (14 x 14 at 224 px), then bad layers, heads and options.
ATTN="$DIR/attn"
run attn --checkpoint "$TINY" --layers 0,5 --out "$ATTN" "$PNG"
if [ "$rc" -eq 0 ]; then expect_out "attn summary" '^wrote .*attn\.safetensors: 2 layers \(0,5\), rollout \[1, 14, 14\]$'
else fail "attn: exit code $rc"; fi
run inspect "$ATTN/attn.safetensors"
if [ "$rc" -eq 0 ]; then expect_out "attn.safetensors tensors" '^layer\.0\.attention_probs +F32 +\[1, 1, 3136, 784\] ' \
  '^layer\.5\.attention_probs +F32 +\[1, 3, 197, 50\] ' '^rollout +F32 +\[1, 14, 14\] '
else fail "inspect attn.safetensors: exit code $rc"; fi
if grep -q '"predictions"' "$ATTN/attn.json" 2>/dev/null; then pass "attn.json"; else fail "attn.json missing or without predictions"; fi
# The gradient methods: grad-rollout and relevance maps beside rollout, for a class given by name.
run attn --checkpoint "$TINY" --layers 5 --method rollout,grad-rollout,relevance --class 1 --out "$ATTN-grad" "$PNG"
if [ "$rc" -eq 0 ]; then
  expect_out "attn gradient maps" '^wrote .*attn\.safetensors: 1 layer \(5\), rollout \[1, 14, 14\], grad_rollout \[1, 14, 14\], relevance \[1, 14, 14\]$'
  if grep -q '"explained"' "$ATTN-grad/attn.json" && grep -q 'Chefer' "$ATTN-grad/index.html"; then pass "attn gradient maps described"
  else fail "attn: the explained class or the relevance formula is missing"; fi
else fail "attn --method grad-rollout,relevance: exit code $rc"; fi
run attn --checkpoint "$TINY" --method rollout,saliency --out "$ATTN" "$PNG"; expect_error "attn unknown method" "--method 'saliency'"
run attn --checkpoint "$TINY" --method relevance --class 9 --out "$ATTN" "$PNG"; expect_error "attn unknown class" "--class 9"
run attn --checkpoint "$TINY" --layers 6 --out "$ATTN" "$PNG"; expect_error "attn unknown layer" "--layers 6"
run attn --checkpoint "$TINY" --layers 5 --heads 3 --out "$ATTN" "$PNG"; expect_error "attn unknown head" "--heads 3"
run attn --checkpoint "$TINY" --discard 1 --out "$ATTN" "$PNG"; expect_error "attn bad discard" "--discard"
run attn --checkpoint "$TINY" --fuse median --out "$ATTN" "$PNG"; expect_error "attn bad fuse" "median"
run attn --checkpoint "$TINY" --out "$ATTN"; expect_error "attn no images" "no images"
run attn --checkpoint "$TINY" --device tpu --out "$ATTN" "$PNG"; expect_error "attn bad device" "tpu"
if "$BIN" --version | grep -q '^CUDA: built, device'; then echo "skip: attn --device cuda error (a GPU is present)"
else run attn --checkpoint "$TINY" --device cuda --out "$ATTN" "$PNG"; expect_error "attn --device cuda without a GPU says why" "--device cuda"; fi
run attn --checkpoint "$TINY" --out "$ATTN" "$DIR/missing.png"; expect_error "attn unreadable image" "missing.png"

# tessera attn's page and heat maps: index.html with the statistics; PNGs unless the build has no cairo (the
# page then says so); a query patch on the grids that have it, and bad queries.
run attn --checkpoint "$TINY" --layers 0,5 --query 3,4 --out "$ATTN" "$PNG"
if [ "$rc" -eq 0 ]; then expect_out "attn page summary" '^wrote .*index\.html \('
else fail "attn --query: exit code $rc"; fi
if grep -q 'Statistics per layer and head' "$ATTN/index.html" 2>/dev/null && grep -q '"mean_distance_px"' "$ATTN/attn.json"
then pass "attn page and statistics"; else fail "attn: index.html or the statistics in attn.json missing"; fi
if grep -q 'No pictures: ' "$ATTN/index.html" 2>/dev/null; then pass "attn page without cairo says so"
elif (for f in 0_input 0_layer0_keys 0_layer5_head2 0_layer5_mean 0_rollout 0_layer0_query_3_4 0_layer5_query_3_4; do
        [ "$(head -c 4 "$ATTN/png/$f.png" 2>/dev/null | od -An -c | tr -d ' ')" = '211PNG' ] || exit 1; done)
then pass "attn heat maps"; else fail "attn: a heat map under png/ is missing or not a PNG"; fi
run attn --checkpoint "$TINY" --query 3 --out "$ATTN" "$PNG"; expect_error "attn bad query" "--query 3"
run attn --checkpoint "$TINY" --layers 5 --query 20,2 --out "$ATTN" "$PNG"; expect_error "attn query off every grid" "--query 20,2"

# tessera attn --data: a labelled folder streamed through the model (statistics per layer, head and class, the
# mean rollout per class, head importance, a masked head's effect), and what --data refuses.
LABELLED="$DIR/labelled"
mkdir -p "$LABELLED/glioma_tumor" "$LABELLED/no_tumor"
cp "$PNG" "$LABELLED/glioma_tumor/a.png"; cp "$PNG" "$LABELLED/glioma_tumor/b.png"; cp "$PNG" "$LABELLED/no_tumor/c.png"
printf 'not an image' >"$LABELLED/no_tumor/broken.png"
run attn --checkpoint "$TINY" --data "$LABELLED" --split "" --method rollout,importance --mask-heads 5:1 --batch-size 2 --out "$ATTN-data"
if [ "$rc" -eq 0 ]; then
  expect_out "attn --data summary" '^.*labelled: 3 images \(1 skipped\), accuracy [0-9.]+, loss [0-9.]+ \(without the masked heads: accuracy [0-9.]+, loss [0-9.]+\)$' \
    '^wrote .*statistics\.csv, .*attn\.json, .*attn\.safetensors$'
  # 6 layers of 1 + 2 + 2 + 3 + 3 + 3 heads: 14 rows for "all" and as many per class present (2 classes), 42 + header.
  if [ "$(wc -l <"$ATTN-data/statistics.csv")" -eq 43 ] && grep -q '^5,2,1,all,3,' "$ATTN-data/statistics.csv" &&
     grep -q '^5,2,1,no_tumor,1,' "$ATTN-data/statistics.csv"; then pass "attn --data statistics.csv"
  else fail "attn --data: statistics.csv does not hold every layer, head and class"; fi
  if grep -q '"masking"' "$ATTN-data/attn.json" && grep -q '"importance"' "$ATTN-data/attn.json" &&
     grep -q 'Head importance by depth' "$ATTN-data/index.html" && grep -q 'Heads masked' "$ATTN-data/index.html"
  then pass "attn --data importance and masking"; else fail "attn --data: importance or masking missing"; fi
else fail "attn --data: exit code $rc"; fi
run inspect "$ATTN-data/attn.safetensors"
if [ "$rc" -eq 0 ]; then expect_out "attn --data mean maps" '^rollout\.mean\.glioma_tumor +F32 +\[14, 14\] ' '^rollout\.mean\.no_tumor +F32 +\[14, 14\] '
else fail "inspect attn --data's attn.safetensors: exit code $rc"; fi
run attn --checkpoint "$TINY" --data "$LABELLED" --split "" --out "$ATTN-data" "$PNG"; expect_error "attn --data and images" "not both"
run attn --checkpoint "$TINY" --data "$LABELLED" --split "" --method rollout,relevance --class label --out "$ATTN-rel"
if [ "$rc" -eq 0 ]; then
  run inspect "$ATTN-rel/attn.safetensors"
  expect_out "attn --data gradient maps" '^relevance\.mean\.glioma_tumor +F32 +\[14, 14\] ' '^rollout\.mean\.no_tumor +F32 +\[14, 14\] '
else fail "attn --data --method rollout,relevance --class label: exit code $rc"; fi
run attn --checkpoint "$TINY" --class label --out "$ATTN" "$PNG"; expect_error "attn --class label without --data" "--class label"
run attn --checkpoint "$TINY" --data "$LABELLED" --out "$ATTN-data"; expect_error "attn --data missing split" "Testing"
run attn --checkpoint "$TINY" --mask-heads 5:7 --out "$ATTN" "$PNG"; expect_error "attn mask unknown head" "--mask-heads 5:7"
run attn --checkpoint "$TINY" --mask-heads 5 --out "$ATTN" "$PNG"; expect_error "attn mask bad pair" "LAYER:HEAD"

if [ "$failures" -ne 0 ]; then echo "$failures check(s) failed"; exit 1; fi
echo "all CLI checks passed"
