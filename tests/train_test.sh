#!/usr/bin/env bash
# `tessera train`, `eval` and `predict --checkpoint` end to end on a tiny CvT and the synthetic data set:
# a run killed mid-epoch and resumed (on another thread count) ends bit-identical to one never interrupted;
# the run directory holds what train/trainer.h promises; bad options fail with one clear line.
# Usage: tests/train_test.sh PATH/TO/tessera SCRATCH_DIR        (bash + coreutils + cmp only)
set -u
BIN=${1:?usage: train_test.sh PATH/TO/tessera SCRATCH_DIR}
DIR=${2:?usage: train_test.sh PATH/TO/tessera SCRATCH_DIR}
rm -rf "$DIR" && mkdir -p "$DIR" || exit 1
failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok:   $*"; }

# 64 training images, 16 per step: 4 steps per epoch, 3 epochs. Drop path on, so the random stream's
# checkpointed offset matters too; every training feature on (grouped split, one input plane, per-image
# standardisation, the intensity augmentations, random erasing, mixup/CutMix, MixStyle, the weights' moving average,
# class-balanced loss, mirrored evaluation), so each of them resumes bit-identically too.
TINY=(--recipe cpu --synthetic --image-size 32 --epochs 3 --max-train-samples 64 --batch-size 16
      --drop-path 0.1 --log-every 1 --no-progress --split grouped --channels 1 --per-image-norm
      --gamma 0.3 --blur 0.3 --noise 0.03 --erase 0.3 --mixup 0.2 --cutmix 1.0 --mixstyle 0.5 --ema 0.9 --balanced-loss --tta)

"$BIN" train "${TINY[@]}" --out "$DIR/whole" >"$DIR/whole.log" 2>&1 || { fail "uninterrupted run failed"; cat "$DIR/whole.log"; }

# Killed at step 6 (in epoch 2): only epoch 1's checkpoint exists.
"$BIN" train "${TINY[@]}" --out "$DIR/killed" --halt-after-steps 6 >"$DIR/killed.log" 2>&1
rc=$?
[ "$rc" -eq 137 ] && pass "halted run exits 137" || fail "halted run exit code $rc, expected 137"
[ "$(readlink "$DIR/killed/last")" = checkpoint-epoch-001 ] && pass "killed run's last checkpoint is epoch 1" \
  || fail "killed run's last is '$(readlink "$DIR/killed/last")'"
# Resumed on one thread where the run began on every core: a checkpoint moves between machines, and no sum
# may depend on how the work was spread (on a one-core machine both runs have one thread).
TESSERA_NUM_THREADS=1 "$BIN" train --resume "$DIR/killed" --no-progress >"$DIR/resumed.log" 2>&1 \
  || { fail "resume failed"; cat "$DIR/resumed.log"; }
# The resumed run must not retrain epoch 1 (a restart from scratch would also end identical: all is seeded).
if grep -q "resuming .* after epoch 1" "$DIR/resumed.log" && ! grep -q "^epoch 1/3 " "$DIR/resumed.log" \
   && grep -q "^epoch 2/3 " "$DIR/resumed.log"; then pass "resume trains epochs 2 and 3 only"
else fail "resume did not continue after epoch 1"; cat "$DIR/resumed.log"; fi

for f in model.safetensors raw_model.safetensors optimizer.safetensors; do
  cmp -s "$DIR/whole/last/$f" "$DIR/killed/last/$f" && pass "resumed $f is bit-identical" \
    || fail "resumed $f differs from the uninterrupted run's"
done
# metrics.jsonl: the same lines once the timing fields are dropped (the killed epoch's lines replaced).
strip() { sed -E 's/,?"(elapsed_s|epoch_s|images_per_s|loader_wait_s)":[^,}]*//g' "$1"; }
if diff <(strip "$DIR/whole/metrics.jsonl") <(strip "$DIR/killed/metrics.jsonl") >/dev/null; then
  pass "resumed metrics.jsonl matches"
else
  fail "metrics.jsonl differs:"; diff <(strip "$DIR/whole/metrics.jsonl") <(strip "$DIR/killed/metrics.jsonl") | head
fi
[ "$(grep -c '"event":"epoch"' "$DIR/whole/metrics.jsonl")" -eq 3 ] && pass "three epoch lines" || fail "epoch lines"

# A diverging run stops with exit 1 and says so; it never writes a NaN checkpoint or calls it best.
"$BIN" train --recipe cpu --synthetic --image-size 32 --epochs 2 --max-train-samples 64 --batch-size 16 --no-progress \
  --lr 1e30 --out "$DIR/diverged" >"$DIR/diverged.log" 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q "diverged\|not finite" "$DIR/diverged.log" && [ ! -e "$DIR/diverged/best" ]; then
  pass "a diverging run stops with exit 1 and no best checkpoint"
else fail "diverging run: exit $rc"; tail -3 "$DIR/diverged.log"; fi

# Ctrl-C (SIGINT) or SIGTERM: the step in progress ends, the run says where it stopped and how to resume,
# and exits 128 + signal.
for sig in INT TERM; do
  "$BIN" train --recipe cpu --synthetic --image-size 32 --epochs 200 --max-train-samples 64 --batch-size 16 \
    --no-progress --out "$DIR/signal-$sig" >"$DIR/signal-$sig.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do grep -q "^epoch 1/" "$DIR/signal-$sig.log" && break; sleep 0.1; done
  kill -"$sig" "$pid"
  wait "$pid"
  rc=$?
  want=$([ "$sig" = INT ] && echo 130 || echo 143)
  if [ "$rc" -eq "$want" ] && grep -q "stopped by SIG$sig .*--resume $DIR/signal-$sig" "$DIR/signal-$sig.log"; then
    pass "SIG$sig stops the run with exit $want and says how to resume"
  else fail "SIG$sig: exit $rc (want $want)"; tail -2 "$DIR/signal-$sig.log"; fi
done
# A second signal ends the run at once, without waiting for the step in progress. Both land inside one
# step, so the first one's orderly stop never gets to say where it stopped: metrics.jsonl shows a step's line
# just before that step checks for a signal, so the first is sent 0.3 s after the line (inside the next
# step) and the second 0.2 s later. That needs steps of 1.5 s and more: 64 px images in batches of 32 where
# the build is slow (under the sanitizers, about 3 s a step), else 192 px (about 1.8 s in a Release build; 1.25 s
# at 160 px was too close on an idle machine). The run at 64 px tells which: too quick a step, and it is
# replaced by one at 192 px.
steps() { local n; n=$(grep -c '"event":"step"' "$DIR/signal-twice/metrics.jsonl" 2>/dev/null); echo "${n:-0}"; }
for size in 64 192; do
  rm -rf "$DIR/signal-twice"
  "$BIN" train --recipe cpu --synthetic --image-size "$size" --epochs 200 --max-train-samples 128 --batch-size 32 \
    --log-every 1 --no-progress --out "$DIR/signal-twice" >"$DIR/signal-twice.log" 2>&1 &
  pid=$!
  for _ in $(seq 3000); do [ "$(steps)" -ge 1 ] && break; sleep 0.02; done
  first=$(steps)
  for _ in $(seq 3000); do [ "$(steps)" -gt "$first" ] && break; sleep 0.02; done
  # the time between the last two step lines (elapsed_s counts from the run's start)
  step_s=$(grep '"event":"step"' "$DIR/signal-twice/metrics.jsonl" | grep -o '"elapsed_s":[0-9.]*' | tail -2 \
           | awk -F: 'NR == 1 { a = $2 } NR == 2 { printf "%.3f", $2 - a }')
  [ "$size" = 192 ] || awk -v s="${step_s:-0}" 'BEGIN { exit !(s >= 1.5) }' && break
  kill -9 "$pid"; wait "$pid" 2>/dev/null
done
sleep 0.3; kill -INT "$pid"; sleep 0.2; kill -INT "$pid"
wait "$pid"
rc=$?
if [ "$rc" -eq 130 ] && ! grep -q "stopped by SIG" "$DIR/signal-twice.log"; then
  pass "a second SIGINT ends the run at once (exit 130)"
else fail "a second SIGINT: exit $rc"; tail -2 "$DIR/signal-twice.log"; fi

# The run directory.
for f in run.json metrics.jsonl eval_Testing.json report.html confusion_matrix.png best/model.safetensors \
         best/config.json best/preprocessor_config.json best/trainer_state.json last/optimizer.safetensors; do
  # A build without cairo (the GPU machine's) writes no PNG and says so in the report instead.
  if [ "$f" = confusion_matrix.png ] && grep -q 'No confusion_matrix.png' "$DIR/whole/report.html"; then continue; fi
  [ -s "$DIR/whole/$f" ] || fail "run directory lacks $f"
done
[ "$(ls -d "$DIR"/whole/checkpoint-epoch-* | wc -l)" -le 2 ] && pass "only last and best kept" || fail "old checkpoints kept"
ls -a "$DIR/whole" | grep -q '\.tmp' && fail "temporary files left behind" || pass "no temporary files left"

# eval and predict take the run directory (its best checkpoint).
"$BIN" eval --checkpoint "$DIR/whole" --data "$DIR/whole/synthetic-data" --novel "$DIR/whole/novel_testing.txt" --json \
  >"$DIR/eval.json" 2>"$DIR/eval.err" || { fail "eval failed"; cat "$DIR/eval.err"; }
want=$(grep -o '"accuracy": *[0-9.e-]*' "$DIR/whole/eval_Testing.json" | head -1 | grep -o '[0-9.e-]*$')
got=$(grep -o '"accuracy": *[0-9.e-]*' "$DIR/eval.json" | head -1 | grep -o '[0-9.e-]*$')
[ -n "$want" ] && [ "$want" = "$got" ] && pass "eval reproduces the run's Testing accuracy ($got)" \
  || fail "eval accuracy '$got' vs the run's '$want'"
grep -q '"confusion_matrix"' "$DIR/eval.json" && grep -q '"novel": *{' "$DIR/eval.json" && pass "eval --json has the matrix and novel subset" \
  || fail "eval --json lacks confusion_matrix or novel"
img=$(ls "$DIR/whole/synthetic-data/Testing/disc/"*.png | head -1)
"$BIN" predict --checkpoint "$DIR/whole" --top 2 "$img" >"$DIR/predict.out" 2>&1 && grep -Eq '^  [0-9.]+  (disc|ring|stripes|checkerboard)$' "$DIR/predict.out" \
  && pass "predict --checkpoint names a class" || { fail "predict --checkpoint"; cat "$DIR/predict.out"; }

# Classes by name: a Testing folder without one class keeps every other class's label (read by position,
# disc would take checkerboard's label 0), the output says which class had no images, and a class folder the
# model lacks is refused naming it. The run's classes are Training's, sorted: checkerboard, disc, ring, stripes.
PART="$DIR/partial-data"
mkdir -p "$PART" && cp -r "$DIR/whole/synthetic-data/Testing" "$PART/" && rm -rf "$PART/Testing/checkerboard"
if "$BIN" eval --checkpoint "$DIR/whole" --data "$PART" --json >"$DIR/partial.json" 2>"$DIR/partial.err"; then
  # --json's predictions list each object's keys in order: label, ..., path
  if awk -F'"' '/"label":/ { l = $3; gsub(/[^0-9]/, "", l) }
       /"path":/ { n = split($4, a, "/"); c = a[n - 1]; want = c == "disc" ? 1 : c == "ring" ? 2 : c == "stripes" ? 3 : -1;
                   seen++; if (l != want) bad++ }
       END { exit !(seen == 45 && bad == 0) }' "$DIR/partial.json"; then pass "eval labels a split missing a class by name"
  else fail "eval of a split missing a class: labels are not the model's classes by name"; fi
else fail "eval of a split missing a class"; cat "$DIR/partial.err"; fi
"$BIN" eval --checkpoint "$DIR/whole" --data "$PART" >"$DIR/partial.txt" 2>&1 && grep -q "^no images of class checkerboard$" "$DIR/partial.txt" \
  && pass "eval says which class has no images" || { fail "eval does not report the missing class"; cat "$DIR/partial.txt"; }
mkdir -p "$PART/Testing/zebra" && cp "$PART/Testing/disc/"*_000.png "$PART/Testing/zebra/"

# The study's protocol from a checkpoint (the transformers-written tiny CvT fixture, 4 labels): the head is
# replaced by default; --static-augment doubles the epoch (originals + one fixed augmented copy each);
# --keep-imagenet-head keeps the checkpoint's classifier tensor as it is.
FIXTURE=$(dirname "$0")/fixtures/models/tiny-cvt
STUDY=(--recipe study --weights "$FIXTURE" --synthetic --image-size 32 --epochs 1 --max-train-samples 32 --no-progress)
"$BIN" train "${STUDY[@]}" --out "$DIR/study" >"$DIR/study.log" 2>&1 && grep -q "1 epochs × 2 steps of 16, recipe study" "$DIR/study.log" \
  && pass "study recipe from a checkpoint" || { fail "study recipe"; cat "$DIR/study.log"; }
"$BIN" train "${STUDY[@]}" --static-augment --out "$DIR/static" >"$DIR/static.log" 2>&1 && grep -q "× 4 steps of 16" "$DIR/static.log" \
  && pass "--static-augment doubles the epoch" || { fail "--static-augment"; cat "$DIR/static.log"; }
"$BIN" train "${STUDY[@]}" --keep-imagenet-head --out "$DIR/kept" >"$DIR/kept.log" 2>&1 \
  && grep -q '"keep_imagenet_head": true' "$DIR/kept/run.json" && pass "--keep-imagenet-head runs" || { fail "--keep-imagenet-head"; cat "$DIR/kept.log"; }

# 33 images in batches of 16 leave a last batch of 1, which batch norm cannot train on: it is dropped. The
# same run equalises its images, and its checkpoint says so, so that eval, predict and attn do too.
"$BIN" train --recipe cpu --synthetic --image-size 32 --epochs 1 --max-train-samples 33 --batch-size 16 --no-progress \
  --equalize --out "$DIR/odd" >"$DIR/odd.log" 2>&1 && grep -q "dropping each epoch's last batch of 1 image" "$DIR/odd.log" \
  && grep -q "1 epochs × 2 steps of 16" "$DIR/odd.log" && pass "a last batch of one image is dropped for CvT" \
  || { fail "a last batch of one image"; cat "$DIR/odd.log"; }
grep -q '"tessera_equalize": true' "$DIR/odd/last/preprocessor_config.json" \
  && ! grep -q tessera_equalize "$DIR/whole/last/preprocessor_config.json" \
  && pass "--equalize reaches the checkpoint's preprocessor_config.json" || fail "--equalize in preprocessor_config.json"

# A run whose last link was lost (and which a kill left a temporary checkpoint folder in) resumes from its
# newest complete checkpoint, saying so on stderr, and removes the leftover, saying so.
"$BIN" train --recipe cpu --synthetic --image-size 32 --epochs 2 --max-train-samples 32 --batch-size 16 --no-progress \
  --out "$DIR/lost" --halt-after-steps 3 >"$DIR/lost-first.log" 2>&1
rm -f "$DIR/lost/last" && mkdir -p "$DIR/lost/.checkpoint-epoch-002.tmp-1/x"
if "$BIN" train --resume "$DIR/lost" --no-progress >"$DIR/lost.out" 2>"$DIR/lost.err" \
   && grep -q "resuming from checkpoint-epoch-001, the newest complete checkpoint" "$DIR/lost.err" \
   && grep -q "resuming .* after epoch 1" "$DIR/lost.out" && grep -q "removed .*checkpoint-epoch-002.tmp-1" "$DIR/lost.out" \
   && [ ! -e "$DIR/lost/.checkpoint-epoch-002.tmp-1" ] && [ "$(readlink "$DIR/lost/last")" = checkpoint-epoch-002 ]; then
  pass "resume without the last link continues from the newest complete checkpoint; leftovers removed"
else fail "resume without the last link"; cat "$DIR/lost.out" "$DIR/lost.err"; fi

# Unreadable files in every split are counted in the end-of-run summary (one in Training, one in Testing).
cp -r "$DIR/whole/synthetic-data" "$DIR/corrupt-data"
printf 'not a png' >"$DIR/corrupt-data/Training/disc/zz_bad.png"
printf 'not a png' >"$DIR/corrupt-data/Testing/disc/zz_bad.png"
"$BIN" train --recipe cpu --data "$DIR/corrupt-data" --image-size 32 --epochs 1 --batch-size 64 --no-progress \
  --out "$DIR/corrupt" >"$DIR/corrupt.log" 2>&1
if grep -Eq "^unreadable files skipped: train (1, validation 0|0, validation 1), Testing 1$" "$DIR/corrupt.log"; then
  pass "the summary counts unreadable files of Training and Testing"
else fail "unreadable files in the summary"; tail -5 "$DIR/corrupt.log"; fi

# Faults during checkpoint writes, each ending in a clean error or a resume bit-identical to the run never
# interrupted: kills inside epoch 2's checkpoint write (after the weights are in its temporary folder; after
# the folder is in place, before the links move), kills at moments spread over a run, and a full disk.
FAULT=(--recipe cpu --synthetic --image-size 32 --epochs 3 --max-train-samples 32 --batch-size 16 --no-progress)
start=$(date +%s%N)
"$BIN" train "${FAULT[@]}" --out "$DIR/fault-ref" >"$DIR/fault-ref.log" 2>&1 || fail "the faults' reference run"
ref_ms=$(( ($(date +%s%N) - start) / 1000000 ))
same_as_ref() {
  cmp -s "$DIR/fault-ref/last/model.safetensors" "$1/last/model.safetensors" &&
    cmp -s "$DIR/fault-ref/last/optimizer.safetensors" "$1/last/optimizer.safetensors"
}
for stage in files links; do
  "$BIN" train "${FAULT[@]}" --out "$DIR/fault-$stage" --halt-in-checkpoint "2:$stage" >"$DIR/fault-$stage.log" 2>&1
  rc=$?
  last=$(readlink "$DIR/fault-$stage/last")
  "$BIN" train --resume "$DIR/fault-$stage" --no-progress >>"$DIR/fault-$stage.log" 2>&1
  if [ "$rc" -eq 137 ] && [ "$last" = checkpoint-epoch-001 ] && same_as_ref "$DIR/fault-$stage" \
     && ! ls -a "$DIR/fault-$stage" | grep -q '\.tmp-'; then
    pass "killed inside a checkpoint write ($stage): resumed from the one before, bit-identical"
  else fail "killed inside a checkpoint write ($stage): exit $rc, last '$last'"; tail -3 "$DIR/fault-$stage.log"; fi
done
for share in 25 45 65 85; do  # kill -9 at that share of the reference run's time
  run="$DIR/kill-$share"
  "$BIN" train "${FAULT[@]}" --out "$run" >"$run.log" 2>&1 &
  pid=$!
  sleep "$(awk -v ms="$ref_ms" -v s="$share" 'BEGIN { printf "%.3f", ms * s / 100000 }')"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [ ! -e "$run/last" ] && ! ls "$run" | grep -q '^checkpoint-epoch-'; then
    # Killed before the first checkpoint: nothing to resume, and resume says so.
    "$BIN" train --resume "$run" --no-progress >>"$run.log" 2>&1
    [ $? -eq 1 ] && grep -q "stopped before its first epoch ended" "$run.log" && pass "killed at $share % (before any checkpoint): resume says so" \
      || { fail "killed at $share % before any checkpoint"; tail -2 "$run.log"; }
  else
    grep -q '^best epoch' "$run.log" || "$BIN" train --resume "$run" --no-progress >>"$run.log" 2>&1
    same_as_ref "$run" && pass "killed at $share % of the run: resumed bit-identical" \
      || { fail "killed at $share % of the run: resume differs"; tail -3 "$run.log"; }
  fi
done
# A full disk: a 45 MB file system holds epoch 1's checkpoint (27 MB) but not epoch 2's beside it. Where a
# tmpfs cannot be mounted, a file-size limit (ulimit -f) makes the first checkpoint's write fail instead.
mkdir -p "$DIR/small-disk"
if mount -t tmpfs -o size=45m tmpfs "$DIR/small-disk" 2>/dev/null; then
  "$BIN" train "${FAULT[@]}" --out "$DIR/small-disk/run" >"$DIR/disk-full.log" 2>&1
  rc=$?
  last=$(readlink "$DIR/small-disk/run/last")
  leftovers=$(ls -a "$DIR/small-disk/run" | grep -c '\.tmp-')
  cp -a "$DIR/small-disk/run" "$DIR/disk-full" && umount "$DIR/small-disk"
  "$BIN" train --resume "$DIR/disk-full" --no-progress >>"$DIR/disk-full.log" 2>&1
  if [ "$rc" -eq 1 ] && grep -q "^tessera: error: .*No space left on device" "$DIR/disk-full.log" && [ "$last" = checkpoint-epoch-001 ] \
     && [ "$leftovers" -eq 0 ] && same_as_ref "$DIR/disk-full"; then
    pass "a full disk: one-line error, no partial checkpoint left, resumed elsewhere bit-identical"
  else fail "full disk: exit $rc, last '$last', $leftovers leftovers"; tail -3 "$DIR/disk-full.log"; fi
else
  (trap '' XFSZ; ulimit -f 15000; "$BIN" train "${FAULT[@]}" --out "$DIR/file-limit" >"$DIR/file-limit.log" 2>&1)
  rc=$?
  if [ "$rc" -eq 1 ] && grep -q "^tessera: error: .*optimizer.safetensors" "$DIR/file-limit.log" \
     && ! ls -a "$DIR/file-limit" | grep -q '\.tmp-' && [ ! -e "$DIR/file-limit/last" ]; then
    pass "a write failure (no tmpfs here: a file-size limit): one-line error naming the file, nothing partial left"
  else fail "write failure under ulimit -f: exit $rc"; tail -3 "$DIR/file-limit.log"; fi
fi

# A symbolic link loop named like an image and file names that are not UTF-8 (Training and Testing): the loop
# is skipped with a warning naming it and counted; the run ends, and its JSON files hold U+FFFD for the bytes.
cp -r "$DIR/whole/synthetic-data" "$DIR/odd-names"
ln -s loopb.png "$DIR/odd-names/Training/disc/loopa.png" && ln -s loopa.png "$DIR/odd-names/Training/disc/loopb.png"
cp "$DIR/odd-names/Training/ring/ring_000.png" "$DIR/odd-names/Training/ring/$(printf 'bad\xff\xfe.png')"
cp "$DIR/odd-names/Testing/disc/disc_000.png" "$DIR/odd-names/Testing/disc/$(printf 't\xff.png')"
"$BIN" train --recipe cpu --data "$DIR/odd-names" --image-size 32 --epochs 1 --batch-size 64 --no-progress \
  --out "$DIR/odd-run" >"$DIR/odd-names.log" 2>&1
rc=$?
if [ "$rc" -eq 0 ] && grep -q "skipping unreadable image: .*loopa.png: .*symbolic links" "$DIR/odd-names.log" \
   && grep -Eq "^unreadable files skipped: train [12], validation [01], Testing 0$" "$DIR/odd-names.log" \
   && grep -q "$(printf 't\xef\xbf\xbd.png')" "$DIR/odd-run/eval_Testing.json" && [ -s "$DIR/odd-run/report.html" ]; then
  pass "a link loop is skipped and counted; names that are not UTF-8 survive into the JSON"
else fail "link loop / non-UTF-8 names: exit $rc"; tail -3 "$DIR/odd-names.log"; fi

# Errors: one line, exit 1.
expect_error() {  # NAME WORD -- ARGS...
  local name=$1 word=$2; shift 3
  "$BIN" "$@" >"$DIR/err.out" 2>"$DIR/err.err"; local rc=$?
  if [ "$rc" -eq 1 ] && grep -q '^tessera: error: ' "$DIR/err.err" && grep -qF -- "$word" "$DIR/err.err"; then pass "$name"
  else fail "$name (exit $rc)"; cat "$DIR/err.err"; fi
}
expect_error "missing data names the path and the source" "Brain-Tumor-Classification-DataSet" -- train --data "$DIR/nowhere" --out "$DIR/x"
expect_error "zero epochs" "--epochs" -- train --synthetic --epochs 0 --out "$DIR/x"
expect_error "bad schedule" "--schedule" -- train --synthetic --schedule steep --out "$DIR/x"
expect_error "bad warmup" "--warmup" -- train --recipe cpu --synthetic --warmup 3weeks --out "$DIR/x" --epochs 1 --max-train-samples 8
expect_error "resume without a checkpoint" "no checkpoint to resume" -- train --resume "$DIR/x"
expect_error "resume of a missing folder says so" "the folder does not exist" -- train --resume "$DIR/nowhere"
mkdir -p "$DIR/no-epoch"
expect_error "resume of a run with no checkpoint" "stopped before its first epoch ended" -- train --resume "$DIR/no-epoch"
expect_error "resume cannot change options" "--lr" -- train --resume "$DIR/whole" --lr 0.1
expect_error "a new run does not overwrite an old one" "already holds a run" -- train --synthetic --out "$DIR/whole"
# A run directory in use (its lock held, here by flock(1) for a few seconds) refuses a second run or resume.
if command -v flock >/dev/null; then
  flock "$DIR/whole/.lock" sleep 5 &
  holder=$!
  sleep 0.5
  expect_error "a run directory in use refuses a second resume" "in use by another tessera run" -- train --resume "$DIR/whole"
  kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null
else
  echo "skip: no flock(1) here to hold a run's lock"
fi
if "$BIN" --version | grep -q '^CUDA: built, device'; then echo "skip: --device cuda error (a GPU is present)"
else expect_error "--device cuda without a GPU says why" "--device cuda" -- train --synthetic --device cuda --out "$DIR/x"; fi
expect_error "eval of a missing checkpoint" "nowhere" -- eval --checkpoint "$DIR/nowhere" --data "$DIR/whole/synthetic-data"
expect_error "eval refuses a class folder the model lacks" "zebra" -- eval --checkpoint "$DIR/whole" --data "$PART"
EDGE=(train --recipe cpu --synthetic --image-size 32 --epochs 1 --no-progress --out "$DIR/edge")
expect_error "a warmup longer than the run" "--warmup '1e30ep'" -- "${EDGE[@]}" --warmup 1e30ep
expect_error "no step per epoch" "--max-train-samples 1" -- "${EDGE[@]}" --max-train-samples 1
expect_error "a negative drop path" "--drop-path must be a rate in [0, 1)" -- "${EDGE[@]}" --drop-path -0.5
expect_error "a negative seed" "--seed must be >= 0" -- "${EDGE[@]}" --seed -1

# Damaged runs: whatever a resume or an evaluation reads is verified before it is trusted. Each case damages a
# copy of one run killed after its first epoch; each must end in one line naming the file, exit 1.
cp -r "$DIR/whole/synthetic-data" "$DIR/dmg-data"
"$BIN" train --recipe cpu --data "$DIR/dmg-data" --image-size 32 --epochs 2 --max-train-samples 32 --batch-size 16 \
  --no-progress --out "$DIR/dmg" --halt-after-steps 3 >"$DIR/dmg.log" 2>&1
damaged() { rm -rf "$DIR/dmg-$1" && cp -a "$DIR/dmg" "$DIR/dmg-$1"; }
resign() { (cd "$1" && sha256sum $(cut -c67- SHA256SUMS) > SHA256SUMS); }  # new sums over an edited file
(cd "$DIR/dmg/last" && sha256sum -c --quiet SHA256SUMS) && pass "a checkpoint's SHA256SUMS checks with sha256sum -c" \
  || fail "sha256sum -c of a checkpoint"
damaged flip && printf '\x01' | dd of="$DIR/dmg-flip/last/model.safetensors" bs=1 seek=300 conv=notrunc 2>/dev/null
expect_error "resume refuses a flipped byte in the weights" "model.safetensors: damaged" -- train --resume "$DIR/dmg-flip"
expect_error "eval refuses a flipped byte in the weights" "model.safetensors: damaged" -- eval --checkpoint "$DIR/dmg-flip" --data "$DIR/dmg-data"
expect_error "predict refuses a flipped byte in the weights" "model.safetensors: damaged" -- predict --checkpoint "$DIR/dmg-flip" "$img"
damaged step && sed -i 's/"global_step": 2,/"global_step": 4,/' "$DIR/dmg-step/last/trainer_state.json"
expect_error "resume refuses an edited trainer_state.json" "trainer_state.json: damaged" -- train --resume "$DIR/dmg-step"
resign "$DIR/dmg-step/last"
expect_error "... and, with its checksum forged, one whose step disagrees" "says step 4 after epoch 1" -- train --resume "$DIR/dmg-step"
damaged short && truncate -s 100 "$DIR/dmg-short/metrics.jsonl"
expect_error "resume refuses a metrics.jsonl shorter than the checkpoint says" "metrics.jsonl: shorter" -- train --resume "$DIR/dmg-short"
damaged line && sed -i 's/"best":true/"best":null/' "$DIR/dmg-line/metrics.jsonl"  # the same length
expect_error "resume refuses a changed epoch line in metrics.jsonl" "is not epoch 1's record" -- train --resume "$DIR/dmg-line"
damaged sums && rm "$DIR/dmg-sums/last/SHA256SUMS"
expect_error "resume refuses a checkpoint without SHA256SUMS" "no complete checkpoint" -- train --resume "$DIR/dmg-sums"
# The data changed between the kill and the resume: refused, unless --allow-data-change (then it says so).
damaged changed && cp "$(ls "$DIR"/dmg-data/Training/disc/*.png | head -1)" "$(ls "$DIR"/dmg-data/Training/disc/*.png | tail -1)"
expect_error "resume refuses changed data" "Training changed since the run's last checkpoint" -- train --resume "$DIR/dmg-changed"
"$BIN" train --resume "$DIR/dmg-changed" --allow-data-change --no-progress >"$DIR/allowed.log" 2>&1 \
  && grep -q "^warning: .*Training changed since the run's last checkpoint" "$DIR/allowed.log" && grep -q "^epoch 2/2 " "$DIR/allowed.log" \
  && pass "--allow-data-change resumes changed data, with a warning" || { fail "--allow-data-change"; tail -3 "$DIR/allowed.log"; }
# Forged checksums over files from elsewhere still disagree with each other: the moments of epoch 2, the
# state of another epoch.
damaged moments && cp "$DIR/dmg-changed/checkpoint-epoch-002/optimizer.safetensors" "$DIR/dmg-moments/last/" && resign "$DIR/dmg-moments/last"
expect_error "resume refuses moments that took another number of steps" "its parameters took 4 steps" -- train --resume "$DIR/dmg-moments"
damaged epoch && sed -i 's/"epoch": 1,/"epoch": 2,/' "$DIR/dmg-epoch/last/trainer_state.json" && resign "$DIR/dmg-epoch/last"
expect_error "resume refuses a state whose epoch is not its folder's" "says epoch 2, but it lies in checkpoint-epoch-001" -- train --resume "$DIR/dmg-epoch"
# A novel list is used only on the images it was made for (corrupt-data's Testing has one file more).
expect_error "eval refuses a --novel list made for other data" "was made for other images" -- \
  eval --checkpoint "$DIR/whole" --data "$DIR/corrupt-data" --novel "$DIR/whole/novel_testing.txt"
"$BIN" eval --checkpoint "$DIR/whole" --data "$DIR/corrupt-data" >"$DIR/other.txt" 2>&1 \
  && grep -q "no novel-subset accuracy: .*novel_testing.txt was made for other images" "$DIR/other.txt" \
  && pass "eval does not apply the run's novel list to other data, and says why" || { fail "eval's novel list on other data"; tail -3 "$DIR/other.txt"; }

echo "$failures failure(s)"
[ "$failures" -eq 0 ]
