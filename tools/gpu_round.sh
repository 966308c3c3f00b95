#!/usr/bin/env bash
# The GPU round: one prioritised run that checks every CUDA path and brings back what it saw.
#
#   bash tools/gpu_round.sh                  on the GPU machine: every step, most valuable first, within a
#                                            total deadline (540 s: one 10-minute device call with margin)
#   bash tools/gpu_round.sh --dry-run        here, without a GPU: the same code path, -j2; GPU-only steps
#                                            report "skipped: no GPU" (CI-like check of the round itself)
#   options: --only STEP,...   a subset (names below; build, test, sanitize, bench, pytorch, train also work)
#            --deadline S      total seconds (default 540; a dry run: 540 × 12)
#            --jobs N          build/ctest parallelism (default: all cores; a dry run: 2)
#
# Carrying: the GPU machine has nvcc, CMake, ninja, PyTorch, transformers and timm, but neither the Debian
# libraries (stb, libjpeg-turbo, doctest, Google Benchmark, nlohmann-json, CLI11) nor ../shared. Stage both
# here first and carry them (git-ignored) with the working tree, 64 MiB in all:
#   bash ../shared/gpu/stage-deps.sh && bash tools/stage_libs.sh       # writes .deps (libjpeg, libcrypto)
#   mkdir -p .data && cp -r ../shared/datasets/brain-tumor-mri .data/    # the training data
#   run(command="bash tools/gpu_round.sh", carry=[".deps", ".data"], timeout_s=600)
# Measured here (2026-11-29): .deps 5.3 MB + .data 38.4 MB + the tree 3.0 MB = 46.7 MB (44.5 MiB) of 64 MiB.
# CUDA build of the round's targets (127 ninja steps), from scratch here with -j2: 1,698 s wall, on a
# machine shared with other builds (load ~14 on 2 cores); 3,423 s of compile jobs in all, the CUDA objects
# 1,350 s of it, the longest kernels/cuda/elementwise.cu (323 s): one nvcc process, the build's critical
# path whatever the core count. On 16 idle cores expect 2-4 minutes (the build step's cap is 300 s).
#
# Output, all under $OUT (a dry run without $OUT: a new temporary folder), each file written as soon as it
# exists so a run cut off still returns what it did:
#   summary.json, summary.txt  rewritten after every step: name, status (pass, fail, timeout, skipped),
#                              reason, seconds, exit code, log, key numbers (test counts, failing test cases,
#                              benchmark errors such as cuDNN's refusals, img/s, MFU, peak memory)
#   environment.txt, nvidia-smi-q.txt   git revision and changes, nvcc, driver, cuDNN, CMake, torch versions
#   logs/STEP.log              full output of every step (doctest prints only failures, with their shapes,
#                              errors and indices); build_errors.txt: the first 200 lines of compile errors
#   bench/NAME.json            Google Benchmark JSON per program; pytorch/*.json the PyTorch baselines
#   train/MODEL/               the training run directory without its weights (metrics.jsonl, run.json,
#                              eval_Testing.json, report), gpu_memory.csv sampled during the run
#
# Steps: the table STEPS below, in order of value. Each runs under its own timeout, min(its cap, time left
# before the deadline); a step whose expected time no longer fits is "skipped: out of time". A failing step
# does not stop later ones. Steps marked gpu need one (PyTorch's baselines, compute-sanitizer); the others
# run everywhere, their CUDA test cases skipping (and saying why) where no GPU is usable, and the training
# steps training a tiny model on the CPU instead.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

# ---------------------------------------------------------------------------------------------- settings
# What the build step builds: ninja target names or globs over the configured targets. Everything the
# steps run: the CLI, the tests (ctest runs them all) and the benchmarks. Names absent from this tree are
# reported as missing rather than failing the build.
ROUND_TARGETS=(tessera test_backend_ops 'test_cuda*' test_kernel_math 'test_*' 'bench_*')
BUILD=build-gpu
CUDA_ARCHS=90
DEADLINE=540
BENCH_MIN_TIME=0.05     # seconds per benchmark (Google Benchmark 1.7 takes a plain number)
BENCH_ORDER=(bench_copy bench_layer_norm bench_attention bench_conv_embedding bench_conv bench_adamw bench_ops
             bench_gemm bench_loader)   # the copy ceiling first: the layer-norm target is a share of it
DATA=.data/brain-tumor-mri
# Short from-scratch runs: ~150 steps of 32 (3 epochs of a 1,536-image stratified subset), bf16, the default
# recipe with a warmup that fits the short run. ViT-B/16 from scratch is less stable than CvT-13 at lr 5e-4
# and batch 32 (DeiT-style recipes scale 5e-4 by batch/512), so it gets 1e-4.
TRAIN_GPU=(--recipe default --device cuda --precision bf16 --max-train-samples 1536 --epochs 3 --warmup 0.1
           --log-every 4 --no-progress)
TRAIN_GPU_CVT13=(--model cvt-13)
TRAIN_GPU_VIT_B16=(--model vit-b16 --lr 1e-4)
# Without a GPU: the same pipeline on tiny models at 32 px (seconds on 2 cores), to test the step itself.
TRAIN_CPU=(--recipe cpu --device cpu --image-size 32 --max-train-samples 96 --batch-size 8 --epochs 2
           --val-fraction 0.05 --log-every 2 --no-progress)
TRAIN_CPU_CVT13=(--model cvt-tiny)
TRAIN_CPU_VIT_B16=(--model vit-ti16)

# ---------------------------------------------------------------------------------------------- steps
# name             where  expect cap  what                                   (seconds on the GPU machine;
#                                                                              cap 0: all the time left)
STEPS="
env                any      5    30   git revision, versions, nvidia-smi -q
configure          any     10   120   cmake of $BUILD (sm_$CUDA_ARCHS, third-party from .deps)
build              any     90   300   ninja -k 0 the round's targets
selfcheck          any      5    60   tessera selfcheck
backend_ops        any     20   150   test_backend_ops: every op on CUDA against the CPU reference
cuda_models        any     20   150   test_cuda_models: transformers fixtures through CUDA, bf16 step vs fp32
cuda_tests         any     30   180   the other CUDA test programs (test_cuda*, test_kernel_math)
attn               any     10    60   tessera attn --device cuda against --device cpu: every tensor of attn.safetensors
ctest              any     30   150   ctest, without the programs this round already ran
bench              any     60   200   bench_* programs, Google Benchmark JSON each
model_bench        any     40   120   tessera bench: whole-model step, MFU, memory, per-op/per-layer profile + trace
pytorch_kernels    gpu     40   120   PyTorch baselines: attention, layer norm, conv, AdamW
train_cvt13        any     45   110   CvT-13 from scratch, short: loss must fall; img/s, MFU, peak memory
train_vit_b16      any     45   110   ViT-B/16 from scratch, short: the same
pytorch_step       gpu     60   150   PyTorch training step: eager fp32/bf16, torch.compile bf16
memcheck           gpu     30     0   compute-sanitizer memcheck over the CUDA test programs
"
# Older phase names, as the README and bench/ notes use them.
# shellcheck disable=SC2054  # the values are comma-separated step lists
declare -A ALIASES=([test]=selfcheck,backend_ops,cuda_models,cuda_tests,ctest [sanitize]=memcheck
                    [pytorch]=pytorch_kernels,pytorch_step [train]=train_cvt13,train_vit_b16 [build]=configure,build)

# ---------------------------------------------------------------------------------------------- arguments
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; printf '\nsteps (where, expected and capped seconds on 16 cores):%s' "$STEPS"; }
dry=0 only="" jobs="" deadline="" positional=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --only) only=${2:?--only needs STEP,...}; shift ;;
    --only=*) only=${1#*=} ;;
    --deadline) deadline=${2:?--deadline needs seconds}; shift ;;
    --jobs|-j) jobs=${2:?--jobs needs a number}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "gpu_round.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) positional+=("$1") ;;
  esac
  shift
done
[ ${#positional[@]} -gt 0 ] && only="${only:+$only,}$(IFS=,; echo "${positional[*]}")"
step_names=$(awk 'NF {print $1}' <<<"$STEPS")
selected=""
for s in ${only//,/ }; do
  s=${ALIASES[$s]:-$s}
  for t in ${s//,/ }; do
    grep -qx "$t" <<<"$step_names" || { echo "gpu_round.sh: --only: unknown step '$t' (steps: $(echo $step_names))" >&2; exit 2; }
    selected+=" $t "
  done
done
for v in "$jobs" "$deadline"; do
  [[ -z "$v" || "$v" =~ ^[1-9][0-9]*$ ]] || { echo "gpu_round.sh: --jobs/--deadline take a positive integer, not '$v'" >&2; exit 2; }
done

# A dry run is the CPU machine: 2 cores, everything about twelve times slower than on 16 cores.
scale=1
if [ $dry = 1 ]; then scale=12; jobs=${jobs:-2}; fi
jobs=${jobs:-$(nproc)}
deadline=${deadline:-$((DEADLINE * scale))}
OUT=${OUT:-}
if [ -z "$OUT" ]; then
  OUT=$(mktemp -d "${TMPDIR:-/tmp}/tessera-gpu-round.XXXXXX")
fi
mkdir -p "$OUT/logs" "$OUT/bench" "$OUT/pytorch" "$OUT/train" || exit 1
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
deps=$PWD/.deps/usr
export LD_LIBRARY_PATH=$deps/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PATH=/usr/local/cuda/bin:$PATH

have_gpu=0
if [ $dry = 0 ] && nvidia-smi -L > /dev/null 2>&1; then have_gpu=1; fi
mode=$([ $dry = 1 ] && echo dry-run || echo gpu)
git_rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)

# ---------------------------------------------------------------------------------------------- summary
# The record of each step is one JSON line in steps.jsonl; summary.json and summary.txt are rebuilt from
# it (and from the step's log or output files, for the key numbers) after every step.
py() {
  python3 - "$@" <<'PY'
import glob, json, os, re, statistics, sys

OUT = os.environ["ROUND_OUT"]
TRAIN_GFLOP = {"cvt-13": 27.0, "vit-b16": 105.0}  # per image, forward + backward (bench/README.md)
PEAK_BF16 = 989e12                                 # H100/H200 SXM bf16 dense: the MFU denominator


def read(path):
    try:
        with open(path, errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def doctest_numbers(text):
    n = {}
    totals = [0, 0, 0, 0]
    runs = re.findall(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed\s*\|\s*(\d+) skipped", text)
    for r in runs:
        totals = [a + int(b) for a, b in zip(totals, r)]
    if runs:
        n.update(cases=totals[0], passed=totals[1], failed=totals[2])
    a = re.findall(r"\[doctest\] assertions:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed", text)
    if a:
        n.update(assertions=sum(int(x[0]) for x in a), assertions_failed=sum(int(x[2]) for x in a))
    failing, crashed = [], []
    for block in re.split(r"\n=+\n", text):
        m = re.search(r"^TEST CASE:\s+(.*)$", block, re.M)
        if not m:
            continue
        name = m.group(1).strip()
        if "CRASHED" in block and name not in crashed:
            crashed.append(name)
        if re.search(r"\b(ERROR|FATAL ERROR):", block) and name not in failing:
            failing.append(name)
    if failing:
        n["failing_cases"] = failing[:40]
    if crashed:
        n["crashed_cases"] = crashed
    durations = [(float(s), name) for s, name in re.findall(r"^(\d+\.\d+) s: (.*)$", text, re.M)]
    if durations:
        slow = [f"{s:.1f} s {name}" for s, name in sorted(durations, reverse=True)[:3] if s >= 0.05]
        if slow:
            n["slowest_cases"] = slow
        compare = [name for _, name in durations if "compare" in name.lower()]
        if compare:
            n["compare_cases_run"] = len(compare)
            n["compare_cases_failed"] = sum(1 for name in failing if "compare" in name.lower())
    skips = re.findall(r"MESSAGE: (skipped: .*)", text)
    if skips:
        n["cases_skipped_no_gpu"] = len(skips)
        n["skip_reason"] = skips[0][:200]
    return n


def done_cases(text):
    """The test cases a crashed doctest run got through or crashed in: excluded from its rerun."""
    names = [name for _, name in re.findall(r"^(\d+\.\d+) s: (.*)$", text, re.M)]
    names += doctest_numbers(text).get("crashed_cases", [])
    # doctest filters: ',' separates patterns, '?' matches any one character.
    return ",".join(dict.fromkeys(n.replace(",", "?") for n in names))


def ctest_numbers(text):
    n = {}
    m = re.search(r"(\d+)% tests passed, (\d+) tests? failed out of (\d+)", text)
    if m:
        n.update(tests=int(m.group(3)), failed=int(m.group(2)))
    failed = re.findall(r"^\s*\d+ - (.*) \(([^()]*)\)\s*$", text.split("The following tests FAILED:")[-1], re.M) \
        if "The following tests FAILED:" in text else []
    if failed:
        n["failing_tests"] = [f"{name} ({why})" for name, why in failed[:40]]
    return n


def bench_numbers(path):
    try:
        with open(path) as fh:
            j = json.load(fh)
    except (OSError, ValueError):
        return {"json": "absent or unreadable"}
    rows = [b for b in j.get("benchmarks", []) if b.get("run_type", "iteration") == "iteration"]
    errors = [b for b in rows if b.get("error_occurred")]
    n = {"benchmarks": len(rows), "errors": len(errors)}
    msgs = list(dict.fromkeys(b.get("error_message", "")[:300] for b in errors))
    if msgs:
        n["error_messages"] = msgs[:6]
    return n


def pytorch_numbers(path, log):
    m = re.search(r"^no CUDA device: .*$", read(log), re.M)
    if m:
        return {"note": m.group(0)}
    try:
        with open(path) as fh:
            j = json.load(fh)
    except (OSError, ValueError):
        return {"json": "absent or unreadable"}
    recs = j.get("records", [])
    n = {"device": j.get("device"), "torch": j.get("torch"), "records": len(recs),
         "errors": sum(1 for r in recs if r.get("status") == "error")}
    steps = [f"{r['model']} {r['mode']}: {r['images_per_s']:.0f} img/s, MFU {100 * r['mfu']:.1f}%"
             for r in recs if r.get("section") == "step" and r.get("status") == "ok"]
    if steps:
        n["steps"] = steps
    return n


def train_numbers(run, model_key, gpu_memory_csv):
    n = {}
    lines = []
    for line in read(os.path.join(run, "metrics.jsonl")).splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pass
    steps = [l for l in lines if l.get("event") == "step"]
    epochs = [l for l in lines if l.get("event") == "epoch"]
    if steps:
        last_epoch = steps[-1]["epoch"]
        ips = [l["images_per_s"] for l in steps if l["epoch"] == last_epoch]
        n["img_per_s"] = round(ips[-1], 1)            # the last epoch's: decoded-image cache warm
        n["img_per_s_first_epoch"] = round([l for l in steps if l["epoch"] == steps[0]["epoch"]][-1]["images_per_s"], 1)
        n["steps"] = steps[-1]["global_step"]
        if model_key in TRAIN_GFLOP:
            n["mfu_pct"] = round(100 * TRAIN_GFLOP[model_key] * 1e9 * n["img_per_s"] / PEAK_BF16, 2)
        losses = [l["loss"] for l in steps]
        k = max(1, len(losses) // 4)
        first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])
        n["loss_first"], n["loss_last"] = round(first, 4), round(last, 4)
    if len(epochs) >= 2:  # epoch means are steadier than windows of a few steps
        first, last = epochs[0]["train_loss"], epochs[-1]["train_loss"]
        n["epoch_train_loss"] = [round(e["train_loss"], 4) for e in epochs]
        n["val_accuracy"] = [round(e["val_accuracy"], 4) for e in epochs]
    if steps or len(epochs) >= 2:
        n["loss_falls"] = bool(last < first) and all(v == v for v in (first, last))  # NaN never falls
    ev = read(os.path.join(run, "eval_Testing.json"))
    if ev:
        try:
            n["test_accuracy"] = round(json.loads(ev).get("accuracy"), 4)
        except (ValueError, TypeError):
            pass
    mem = [int(x) for x in re.findall(r"^\s*(\d+)\s*$", read(gpu_memory_csv), re.M)]
    if mem:
        n["peak_gpu_memory_mib"] = max(mem)  # device-wide, sampled: context + the allocator's pool
    return n


def numbers(kind, arg, log):
    text = read(log)
    if kind == "doctest":
        return doctest_numbers(text)
    if kind == "memcheck":
        n = doctest_numbers(text)
        e = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        n = {k: v for k, v in n.items() if k in ("cases", "failed", "crashed_cases", "slowest_cases")}
        n["memcheck_errors"] = sum(int(x) for x in e) if e else None
        first = [l[10:].strip() for l in text.splitlines()
                 if l.startswith("========= ") and not l.startswith("=========  ") and "ERROR SUMMARY" not in l
                 and "COMPUTE-SANITIZER" not in l]
        if first:
            n["first_reports"] = [l[:200] for l in dict.fromkeys(first)][:4]
        return n
    if kind == "ctest":
        return ctest_numbers(text)
    if kind == "bench":
        return bench_numbers(arg)
    if kind == "pytorch":
        return pytorch_numbers(arg, log)
    if kind == "train":
        run, model_key = arg.split("|")
        return train_numbers(run, model_key, os.path.join(run, "gpu_memory.csv"))
    if kind == "build":
        failed = re.findall(r"^FAILED: (\S+)", text, re.M)
        n = {"failed_edges": len(failed)}
        if failed:
            n["failed"] = failed[:20]
        m = re.findall(r"^\[(\d+)/(\d+)\]", text, re.M)
        if m:
            n["edges_done"] = f"{m[-1][0]}/{m[-1][1]}"
        return n
    if kind == "selfcheck":
        n = {"passed": len(re.findall(r"^\s*PASS\b", text, re.M))}
        failed = [l.strip()[:200] for l in re.findall(r"^\s*FAIL\b.*$", text, re.M)]
        n["failed"] = failed if failed else 0
        m = re.search(r"^\s*device:\s*(.*)$", text, re.M)
        if m:
            n["device"] = m.group(1)
        return n
    if kind == "env":
        n = {}
        for key, pat in (("gpu", r"^GPU 0: (.*?) \(UUID"), ("driver", r"Driver Version:\s*([\d.]+)"),
                         ("nvcc", r"release ([\d.]+), V"), ("cmake", r"cmake version (\S+)")):
            m = re.search(pat, text, re.M)
            if m:
                n[key] = m.group(1)
        return n
    return {}


def rebuild():
    recs = {}
    for line in read(os.path.join(OUT, "steps.jsonl")).splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        recs[r["name"]] = r  # a later record of the same name replaces the earlier
    meta = json.loads(read(os.path.join(OUT, "round.json")) or "{}")
    steps = list(recs.values())
    counts = {s: sum(1 for r in steps if r["status"] == s) for s in ("pass", "fail", "timeout", "skipped")}
    summary = dict(meta, counts=counts, steps=steps)
    tmp = os.path.join(OUT, "summary.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(summary, fh, indent=1)
    os.replace(tmp, os.path.join(OUT, "summary.json"))

    out = [f"tessera GPU round ({meta.get('mode')}), commit {meta.get('git_rev', '?')[:12]}, started {meta.get('started')}",
           f"deadline {meta.get('deadline_s')} s, jobs {meta.get('jobs')}, GPU: {meta.get('gpu') or 'none'}",
           "   ".join(f"{k} {v}" for k, v in counts.items()), ""]
    out.append(f"{'step':<34} {'status':<8} {'s':>5} {'rc':>4}  reason / numbers")
    for r in steps:
        nums = r.get("numbers") or {}
        brief = []
        for k, v in nums.items():
            if isinstance(v, list):
                v = "; ".join(str(x) for x in v[:4]) + (f"; … ({len(v)})" if len(v) > 4 else "")
            brief.append(f"{k}={v}")
        text = "; ".join(x for x in [r.get("reason", "")] if x)
        line = f"{r['name']:<34} {r['status']:<8} {r['seconds']:>5} {'-' if r.get('rc') is None else r['rc']:>4}  {text}"
        out.append(line.rstrip())
        if brief:
            out.append(" " * 6 + ", ".join(brief)[:600])
    with open(os.path.join(OUT, "summary.txt"), "w") as fh:
        fh.write("\n".join(out) + "\n")


cmd = sys.argv[1]
if cmd == "record":
    name, status, reason, seconds, rc, log, kind, arg = sys.argv[2:10]
    rec = {"name": name, "status": status, "reason": reason, "seconds": int(seconds),
           "rc": int(rc) if rc not in ("", "-") else None, "log": os.path.relpath(log, OUT) if log else None}
    try:
        rec["numbers"] = numbers(kind, arg, log) if log or arg else {}
    except Exception as e:  # a parser's slip must not lose the record
        rec["numbers"] = {"parse_error": f"{type(e).__name__}: {e}"}
    n = rec["numbers"]
    # On the GPU machine a CUDA case that skipped, or a benchmark program whose every benchmark errored,
    # means the GPU was not usable there: that is a failure, not a pass.
    if os.environ.get("ROUND_HAVE_GPU") == "1" and status == "pass":
        if n.get("cases_skipped_no_gpu"):
            status = rec["status"] = "fail"
            reason = rec["reason"] = f"{n['cases_skipped_no_gpu']} CUDA cases skipped: {n.get('skip_reason', '')}"
        elif kind == "bench" and n.get("benchmarks") and n.get("errors") == n.get("benchmarks"):
            status = rec["status"] = "fail"
            reason = rec["reason"] = "every benchmark reported an error"
    if status in ("fail", "timeout") and log:  # say why: the failing cases, else the log's end
        failing = n.get("failing_cases") or n.get("failing_tests")
        if failing:
            rec["reason"] = f"failing: {'; '.join(failing[:3])}" + (" …" if len(failing) > 3 else "") \
                + (f"; {reason}" if reason else "")
        elif not reason:
            last = [l for l in read(log).splitlines() if l.strip()][-1:]
            rec["reason"] = last[0].strip()[:200] if last else "no output"
    with open(os.path.join(OUT, "steps.jsonl"), "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    rebuild()
    print(json.dumps(rec["numbers"])[:400])
elif cmd == "done_cases":
    print(done_cases(read(sys.argv[2])))
elif cmd == "field":  # field NAME KEY: a number of a step's record, empty if none
    for line in reversed(read(os.path.join(OUT, "steps.jsonl")).splitlines()):
        r = json.loads(line)
        if r["name"] == sys.argv[2]:
            v = (r.get("numbers") or {}).get(sys.argv[3])
            print("" if v is None else v)
            break
elif cmd == "rebuild":
    rebuild()
PY
}
export ROUND_OUT=$OUT ROUND_HAVE_GPU=$have_gpu

# record NAME STATUS REASON SECONDS RC LOG [KIND [ARG]]: one line of the summary, rebuilt at once.
record() {
  local nums
  nums=$(py record "$1" "$2" "$3" "$4" "$5" "$6" "${7:-plain}" "${8:-}")
  printf '%6ss  %-34s %-8s %s\n' "$SECONDS" "$1" "$2" "$3"
  [ -n "$nums" ] && [ "$nums" != "{}" ] && printf '        %s\n' "$nums"
}

# status_of RC: pass, timeout (killed by its limit) or fail.
status_of() { case $1 in 0) echo pass ;; 124|137) echo timeout ;; *) echo fail ;; esac; }

# run_logged LIMIT LOG COMMAND...: the command under a timeout, its output appended to LOG.
run_logged() {
  local limit=$1 log=$2; shift 2
  { printf '$'; printf ' %q' "$@"; printf '   # limit %s s, at %s\n' "$limit" "$(date -u +%T)"; } >> "$log"
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
}

# missing_why NAME: why a program the round needs is absent ("" when present).
missing_why() {
  local bin=$BUILD/bin/$1 src
  [ -x "$bin" ] && return 0
  src=$(ls tests/"$1".cpp bench/"$1".cpp bench/"$1".cu tools/"$1".cpp 2>/dev/null | head -1)
  if [ -z "$src" ]; then echo "missing program: $1 (no source in this tree)"
  else echo "missing program: $BUILD/bin/$1 was not built from $src (see build_errors.txt)"; fi
}

# run_doctest NAME PROGRAM END [ARGS...]: one doctest program until time END (in $SECONDS) at the latest.
# After a crash it runs again without the test cases already done or crashed (at most twice), so one bad
# kernel does not hide the rest.
ran_programs=()
run_doctest() {
  local name=$1 prog=$2 end=$3; shift 3
  local log=$LOGS/${name//:/.}.log t0=$SECONDS rc=0 tries=0 exclude="" why reason=""
  why=$(missing_why "$prog")
  if [ -n "$why" ]; then
    record "$name" "$( [[ $why == *"no source"* ]] && echo skipped || echo fail)" "$why" 0 - ""
    return
  fi
  : > "$log"
  ran_programs+=("$prog")
  while :; do
    local limit=$((end - SECONDS))
    [ $limit -lt 5 ] && { rc=124; reason="no time left for the rerun"; break; }
    run_logged $limit "$log" "$BUILD/bin/$prog" --duration=true ${exclude:+"--test-case-exclude=$exclude"} "$@"
    rc=$?
    tries=$((tries + 1))
    if [ $rc -gt 128 ] && [ $rc -ne 137 ] && [ $tries -lt 3 ]; then
      exclude=$(py done_cases "$log")
      echo "--- crashed (rc $rc): running again without the cases done so far" >> "$log"
      reason="crashed (rc $rc), rerun without the cases done"
      continue
    fi
    break
  done
  local st; st=$(status_of $rc)
  [ -n "$reason" ] && [ $rc -eq 0 ] && st=fail   # the rerun passed, but a case crashed
  [ $st = timeout ] && reason="${reason:+$reason; }timed out after $((SECONDS - t0)) s"
  record "$name" "$st" "$reason" $((SECONDS - t0)) $rc "$log" doctest
}

cuda_test_programs() {  # the CUDA test programs built, test_cuda_models last (the slowest)
  local p
  for p in "$BUILD"/bin/test_cuda* "$BUILD"/bin/test_kernel_math; do
    [ -x "$p" ] && [ "$(basename "$p")" != test_cuda_models ] && basename "$p"
  done
}

# ---------------------------------------------------------------------------------------------- step bodies
# Each step_X gets LIMIT (seconds it may take) and sets ST (pass/fail/timeout/skipped), WHY, RC, LOG, KIND,
# ARG for its record; steps made of several programs record each program themselves and leave ST empty.
step_env() {
  LOG=$OUT/environment.txt KIND=env
  {
    echo "date: $(date -u +%FT%TZ)   mode: $mode   host: $(hostname)   cores: $(nproc)"
    echo "git: $git_rev"; git status --short | head -40; git diff --stat | tail -3
    free -g 2>/dev/null | head -2; df -h . | tail -1
    nvidia-smi 2>&1 | head -20
    nvcc --version 2>&1 | tail -2; cmake --version | head -1; echo "ninja $(ninja --version)"
    echo "compute-sanitizer: $(command -v compute-sanitizer || echo absent)"
    ls /usr/local/cuda/lib64/libcudnn.so* /usr/lib/x86_64-linux-gnu/libcudnn.so* 2>/dev/null | head -3
    python3 -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn",
torch.backends.cudnn.version(), "transformers", transformers.__version__)' 2>&1 | tail -1
    echo "carried: .deps $(du -sh .deps 2>/dev/null | cut -f1), .data $(du -sh .data 2>/dev/null | cut -f1)"
  } > "$LOG" 2>&1
  [ $have_gpu = 1 ] && timeout 30 nvidia-smi -q > "$OUT/nvidia-smi-q.txt" 2>&1
  RC=0
  [ -d .deps/usr/include ] || { RC=1; WHY="no .deps: run bash ../shared/gpu/stage-deps.sh here and carry .deps"; }
  { [ -f .deps/usr/include/jpeglib.h ] && [ -f .deps/usr/include/openssl/evp.h ]; } || { [ -f /usr/include/jpeglib.h ] && [ -f /usr/include/openssl/evp.h ]; } || \
    WHY="${WHY:+$WHY; }no libjpeg or OpenSSL headers: run bash tools/stage_libs.sh after stage-deps.sh and carry .deps"
  [ $dry = 0 ] && [ $have_gpu = 0 ] && WHY="${WHY:+$WHY; }NO GPU FOUND (nvidia-smi -L failed): GPU steps skip"
}

# cuDNN (the benchmarks' baselines) may exist only inside PyTorch's wheels, without the unversioned
# libcudnn.so that CMake looks for: link it through a folder of links in the build directory, its headers
# through CPATH and its libraries (cuDNN loads its engines at run time) through LD_LIBRARY_PATH.
cudnn_args=()
if [ ! -e /usr/local/cuda/lib64/libcudnn.so ] && [ ! -e /usr/lib/x86_64-linux-gnu/libcudnn.so ]; then
  pip_cudnn=$(python3 -c 'import nvidia.cudnn as m; print(list(m.__path__)[0])' 2>/dev/null)
  if [ -n "$pip_cudnn" ] && [ -f "$pip_cudnn/include/cudnn.h" ] && ls "$pip_cudnn"/lib/libcudnn.so.* > /dev/null 2>&1; then
    mkdir -p "$BUILD/cudnn"
    ln -sf "$pip_cudnn"/lib/lib*.so* "$BUILD/cudnn/"
    ln -sf "$(ls "$pip_cudnn"/lib/libcudnn.so.* | head -1)" "$BUILD/cudnn/libcudnn.so"
    cudnn_args=(-DCUDNN_LIBRARY="$PWD/$BUILD/cudnn/libcudnn.so" -DCMAKE_CXX_FLAGS="-isystem $pip_cudnn/include"
                -DCMAKE_CUDA_FLAGS="-isystem $pip_cudnn/include")
    export CPATH=$pip_cudnn/include${CPATH:+:$CPATH}
    export LD_LIBRARY_PATH=$PWD/$BUILD/cudnn:$LD_LIBRARY_PATH
  fi
fi

step_configure() {
  LOG=$LOGS/configure.log
  # stage-deps.sh starts .deps without libjpeg-turbo and libcrypto: add them where this machine has the packages.
  if [ -d .deps/usr ] && { [ ! -f .deps/usr/include/jpeglib.h ] || [ ! -f .deps/usr/include/openssl/evp.h ]; } &&
     dpkg -s libjpeg62-turbo-dev libssl-dev > /dev/null 2>&1; then
    run_logged 60 "$LOG" bash tools/stage_libs.sh
  fi
  run_logged "$LIMIT" "$LOG" cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTESSERA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS" -DCMAKE_PREFIX_PATH="$deps" "${cudnn_args[@]}"
  RC=$?
  if [ $RC -ne 0 ]; then WHY="$(grep -m1 -A3 'CMake Error' "$LOG" | tr '\n' ' ' | cut -c1-300)"; return; fi
  local cudnn; cudnn=$(sed -n 's/^CUDNN_LIBRARY:[A-Z]*=//p' "$BUILD/CMakeCache.txt" | grep -v NOTFOUND)
  WHY="cuDNN: ${cudnn:-NOT FOUND (benchmarks without their cuDNN baselines)}"
}

step_build() {
  LOG=$LOGS/build.log KIND=build
  local all targets=() missing=() pat t
  all=$(ninja -C "$BUILD" -t targets all 2>/dev/null | sed -n 's/^\([A-Za-z0-9_]*\): .*/\1/p' | sort -u)
  for pat in "${ROUND_TARGETS[@]}"; do
    local hit=0
    for t in $all; do
      # shellcheck disable=SC2053  # the pattern is a glob on purpose
      [[ $t == $pat ]] || continue
      hit=1
      [[ " ${targets[*]} " == *" $t "* ]] || targets+=("$t")
    done
    [ $hit = 0 ] && missing+=("$pat")
  done
  [ ${#targets[@]} -eq 0 ] && { RC=1; WHY="no targets matched (configure failed?)"; return; }
  run_logged "$LIMIT" "$LOG" ninja -C "$BUILD" -k 0 -j"$jobs" "${targets[@]}"
  RC=$?
  # The compile errors, first 200 lines: each FAILED edge up to the next progress line.
  awk '/^FAILED: /{on=1} /^\[[0-9]+\/[0-9]+\] /{on=0} on' "$LOG" | head -200 > "$OUT/build_errors.txt"
  [ -s "$OUT/build_errors.txt" ] || rm -f "$OUT/build_errors.txt"
  WHY="${#targets[@]} targets"
  [ ${#missing[@]} -gt 0 ] && WHY+="; not in this tree: ${missing[*]}"
  [ $RC -ne 0 ] && WHY+="; errors: see build_errors.txt (ninja -k 0 built what it could)"
}

step_selfcheck() {
  LOG=$LOGS/selfcheck.log KIND=selfcheck
  local why; why=$(missing_why tessera)
  [ -n "$why" ] && { RC=1; WHY=$why; return; }
  run_logged "$LIMIT" "$LOG" "$BUILD/bin/tessera" selfcheck
  RC=$?
}

step_backend_ops() { run_doctest backend_ops test_backend_ops $((SECONDS + LIMIT)); }
step_cuda_models() { run_doctest cuda_models test_cuda_models $((SECONDS + LIMIT)); }

step_cuda_tests() {
  local end=$((SECONDS + LIMIT)) p
  for p in $(cuda_test_programs); do
    [ "$p" = test_backend_ops ] && continue
    if [ $((end - SECONDS)) -lt 10 ]; then record "cuda_tests:$p" skipped "out of time" 0 - ""; continue; fi
    run_doctest "cuda_tests:$p" "$p" "$end"
  done
}

# tessera attn on the GPU against the CPU: the tiny CvT's every layer, rollout, grad rollout and relevance,
# with a head masked, on two images; every tensor of attn.safetensors must agree. Both runs are fp32 with
# exact fp32 products (no tf32 unless a matmul precision asks for it), so they differ only in summation
# order: ~1e-6 on a probability. Bounds: 1e-4 on the probabilities, 1e-3 on the maps (scaled to max 1;
# the gradient methods' ReLU can zero a near-zero entry on one device and not the other).
step_attn() {
  LOG=$LOGS/attn.log
  local why; why=$(missing_why tessera)
  [ -n "$why" ] && { RC=1; WHY=$why; return; }
  # The reference on the CPU and the run on the device in separate folders (without a GPU the run is a
  # second CPU run: the comparison still reads two files). The four passes share the step's time.
  local dev=cpu dir=$OUT/attn fixtures=tests/fixtures end=$((SECONDS + LIMIT))
  [ $have_gpu = 1 ] && dev=cuda
  attn_left() { echo $((end - SECONDS > 1 ? end - SECONDS : 1)); }
  rm -rf "$dir"
  local args=(attn --weights $fixtures/models/tiny-cvt/model.safetensors --method maps,rollout,grad-rollout,relevance
              --mask-heads 5:0 $fixtures/preprocess/rgb_96x64.jpg $fixtures/preprocess/gray_80x56.jpg)
  run_logged "$(attn_left)" "$LOG" "$BUILD/bin/tessera" "${args[@]}" --device cpu --out "$dir/reference-cpu" &&
    run_logged "$(attn_left)" "$LOG" "$BUILD/bin/tessera" "${args[@]}" --device $dev --out "$dir/run-$dev"
  RC=$?
  if [ $RC != 0 ]; then WHY="tessera attn failed (logs/attn.log)"; return; fi
  python3 - "$dir/reference-cpu/attn.safetensors" "$dir/run-$dev/attn.safetensors" >> "$LOG" 2>&1 <<'PY'
import array, json, struct, sys
def load(path):  # safetensors by hand (standard library only): an 8-byte header length, JSON, F32 data
    with open(path, "rb") as fh:
        data = fh.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        out[name] = array.array("f", data[8 + n + a:8 + n + b])
    return out
cpu, dev = load(sys.argv[1]), load(sys.argv[2])
bad = sorted(set(cpu) ^ set(dev))
for name in sorted(set(cpu) & set(dev)):
    worst = max((abs(x - y) for x, y in zip(cpu[name], dev[name])), default=0.0)
    bound = 1e-4 if name.endswith("attention_probs") else 1e-3
    ok = len(cpu[name]) == len(dev[name]) and worst <= bound
    print(f"{name}: {len(cpu[name])} values, max |cpu - device| {worst:.3g} (bound {bound:g}) {'ok' if ok else 'FAIL'}")
    if not ok:
        bad.append(name)
print("tensors in one file only or outside their bound:", bad or "none")
sys.exit(1 if bad else 0)
PY
  RC=$?
  [ $RC != 0 ] && WHY="attn.safetensors differ between cpu and $dev (logs/attn.log)"
  # --data: the statistics streamed from q and k on each device, over 5 Testing images of each class.
  if [ -d "$DATA/Testing" ]; then
    local c
    for c in "$DATA"/Testing/*/; do
      mkdir -p "$dir/data/$(basename "$c")"
      find "$c" -maxdepth 1 -type f | sort | head -5 | xargs -I{} cp {} "$dir/data/$(basename "$c")/"
    done
    local data_args=(attn --weights $fixtures/models/tiny-cvt/model.safetensors --data "$dir/data" --split ""
                     --method rollout,importance --mask-heads 5:0)
    if run_logged "$(attn_left)" "$LOG" "$BUILD/bin/tessera" "${data_args[@]}" --device cpu --out "$dir/data-reference-cpu" &&
       run_logged "$(attn_left)" "$LOG" "$BUILD/bin/tessera" "${data_args[@]}" --device $dev --out "$dir/data-run-$dev"; then
      python3 - "$dir/data-reference-cpu/statistics.csv" "$dir/data-run-$dev/statistics.csv" >> "$LOG" 2>&1 <<'PY'
import csv, sys
a, b = (list(csv.reader(open(p))) for p in sys.argv[1:3])
worst, where = 0.0, None
for ra, rb in zip(a[1:], b[1:]):
    for name, x, y in zip(a[0], ra, rb):
        try:
            d = abs(float(x) - float(y)) / max(abs(float(x)), 1e-6)
        except ValueError:
            d = 0.0 if x == y else float("inf")
        if d > worst:
            worst, where = d, (ra[:4], name, x, y)
# fp32 statistics summed in another order: ~1e-6 relative; the csv prints 6 digits.
ok = len(a) == len(b) and a[0] == b[0] and worst <= 1e-4
print(f"statistics.csv: {len(a) - 1} rows, worst relative difference {worst:.3g} at {where}: {'ok' if ok else 'FAIL'}")
sys.exit(0 if ok else 1)
PY
      [ $? != 0 ] && RC=1 WHY="${WHY:+$WHY; }statistics.csv differs between cpu and $dev (logs/attn.log)"
    else
      RC=1 WHY="${WHY:+$WHY; }tessera attn --data failed (logs/attn.log)"
    fi
    rm -rf "$dir/data"
  fi
  # 30 MB of probabilities and pictures stay behind: attn.json (statistics, predictions) and the page come back.
  find "$dir" \( -name '*.safetensors' -o -name png \) -prune -exec rm -rf {} +
  rm -f "$dir/reference-cpu/index.html" "$dir/data-reference-cpu/index.html"
  [ $have_gpu = 0 ] && WHY="${WHY:+$WHY; }no GPU: cpu against cpu (checks the step itself)"
}

step_ctest() {
  LOG=$LOGS/ctest.log KIND=ctest
  [ -f "$BUILD/CTestTestfile.cmake" ] || { RC=1; WHY="no $BUILD/CTestTestfile.cmake (configure failed?)"; return; }
  local exclude=""
  [ ${#ran_programs[@]} -gt 0 ] && exclude="^($(IFS='|'; echo "${ran_programs[*]}")): "
  run_logged "$LIMIT" "$LOG" ctest --test-dir "$BUILD" -j"$jobs" --timeout "$LIMIT" --output-on-failure \
    ${exclude:+-E "$exclude"}
  RC=$?
  [ -n "$exclude" ] && WHY="without ${ran_programs[*]} (run above)"
}

step_bench() {
  local end=$((SECONDS + LIMIT)) cap=$((60 * scale)) b name progs=() seen=" "
  [ -d "$DATA" ] && export TESSERA_DATASET=$PWD/$DATA   # bench_loader: the carried copy
  for name in "${BENCH_ORDER[@]}"; do
    seen+="$name "
    if [ -x "$BUILD/bin/$name" ]; then progs+=("$name"); continue; fi
    local why; why=$(missing_why "$name")
    record "bench:$name" "$( [[ $why == *"no source"* ]] && echo skipped || echo fail)" "$why" 0 - ""
  done
  for b in "$BUILD"/bin/bench_*; do
    name=$(basename "$b"); [ -x "$b" ] && [[ $seen != *" $name "* ]] && progs+=("$name")
  done
  [ ${#progs[@]} -eq 0 ] && { ST=fail WHY="no bench_* program built" RC=1; return; }
  for name in "${progs[@]}"; do
    local left=$((end - SECONDS)) log=$LOGS/bench.$name.log json=$OUT/bench/$name.json t0=$SECONDS
    if [ $left -lt 10 ]; then record "bench:$name" skipped "out of time" 0 - ""; continue; fi
    run_logged $((left < cap ? left : cap)) "$log" "$BUILD/bin/$name" --benchmark_min_time="$BENCH_MIN_TIME" \
      --benchmark_out="$json" --benchmark_out_format=json
    local rc=$? st why=""
    st=$(status_of $rc)
    [ $st = timeout ] && why="timed out after $((SECONDS - t0)) s: the log holds the benchmarks that finished"
    record "bench:$name" "$st" "$why" $((SECONDS - t0)) $rc "$log" bench "$json"
  done
}

# tessera bench on whole models: the step's median, MFU and peak memory (JSON), then where its time goes
# (--profile: every backend call timed, by op family and layer; --trace: a Perfetto file). Without a GPU,
# cvt-tiny at 32 px on the CPU, to test the step itself.
MODEL_BENCH_GPU=("train cvt-13 32 224" "train vit-b16 32 224" "infer cvt-13 64 224" "infer vit-b16 64 224")
MODEL_BENCH_CPU=("train cvt-tiny 4 32" "infer cvt-tiny 4 32")
step_model_bench() {
  local end=$((SECONDS + LIMIT)) row mode model batch size dev
  local why; why=$(missing_why tessera)
  [ -n "$why" ] && { ST=fail WHY=$why RC=1; return; }
  local rows=("${MODEL_BENCH_CPU[@]}") steps=(--steps 3 --warmup 1); dev=(--device cpu)
  [ $have_gpu = 1 ] && { rows=("${MODEL_BENCH_GPU[@]}"); dev=(--device cuda --precision bf16); steps=(--steps 20 --warmup 5); }
  for row in "${rows[@]}"; do
    read -r mode model batch size <<<"$row"
    local name=bench:tessera_${mode}_$model left=$((end - SECONDS)) t0=$SECONDS
    local base=$OUT/bench/tessera_${mode}_${model} log=$LOGS/bench.tessera_${mode}_${model}.log
    if [ $left -lt 10 ]; then record "$name" skipped "out of time" 0 - ""; continue; fi
    : > "$log"
    run_logged "$left" "$log" "$BUILD/bin/tessera" bench "$mode" --model "$model" --batch "$batch" \
      --image-size "$size" "${dev[@]}" "${steps[@]}" --json
    local rc=$?
    grep '^{' "$log" > "$base.json"   # the JSON line; the log keeps any warning beside it
    [ $rc -eq 0 ] && { run_logged $((end - SECONDS > 10 ? end - SECONDS : 10)) "$log" "$BUILD/bin/tessera" bench \
      "$mode" --model "$model" --batch "$batch" --image-size "$size" "${dev[@]}" --steps 2 --warmup 1 --profile \
      --trace "$base.trace.json"; rc=$?; }
    record "$name" "$(status_of $rc)" "" $((SECONDS - t0)) $rc "$log" "" "$base.json"
  done
}

pytorch() {  # pytorch NAME SECTIONS
  LOG=$LOGS/$1.log KIND=pytorch ARG=$OUT/pytorch/$1.json
  run_logged "$LIMIT" "$LOG" python3 bench/pytorch_baselines.py --sections "$2" --out "$ARG"
  RC=$?
  grep -q '^no CUDA device' "$LOG" && { ST=skipped; WHY=$(grep -m1 '^no CUDA device' "$LOG"); }
}
step_pytorch_kernels() { pytorch pytorch_kernels attention,layernorm,conv,adamw; }
step_pytorch_step() { pytorch pytorch_step step; }

train() {  # train NAME MODEL_KEY ARGS...: a short run; loss must fall
  local name=$1 key=$2; shift 2
  local run=$OUT/train/${name#train_} sampler=""
  LOG=$LOGS/$name.log KIND=train ARG="$run|$key"
  [ -d "$DATA" ] || { RC=1; WHY="no $DATA: copy ../shared/datasets/brain-tumor-mri there and carry .data"; return; }
  local why; why=$(missing_why tessera)
  [ -n "$why" ] && { RC=1; WHY=$why; return; }
  rm -rf "$run"; mkdir -p "$run"
  if [ $have_gpu = 1 ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 250 > "$run/gpu_memory.csv" 2>/dev/null &
    sampler=$!
  fi
  run_logged "$LIMIT" "$LOG" "$BUILD/bin/tessera" train --data "$DATA" --out "$run" "$@"
  RC=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  # The weights (hundreds of MB) never come back: config, state, metrics and the report do.
  find "$run" \( -name '*.safetensors' -o -type l \) -delete   # links (best, last) do not come back either
  [ $RC -eq 124 ] && WHY="timed out after $LIMIT s: numbers from the steps logged so far"
}
loss_check() {  # loss_check NAME: true when it turned the step's status to fail
  local falls; falls=$(py field "$1" loss_falls)
  [ "$ST" = skipped ] && return 1
  if [ "$falls" = False ]; then ST=fail WHY="${WHY:+$WHY; }the loss did not fall"; return 0; fi
  if [ -z "$falls" ] && [ "$ST" != fail ]; then ST=fail WHY="${WHY:+$WHY; }no loss logged in metrics.jsonl"; return 0; fi
  return 1
}
step_train_cvt13() {
  if [ $have_gpu = 1 ]; then train train_cvt13 cvt-13 "${TRAIN_GPU[@]}" "${TRAIN_GPU_CVT13[@]}"
  else train train_cvt13 cvt-tiny "${TRAIN_CPU[@]}" "${TRAIN_CPU_CVT13[@]}"; WHY="${WHY:+$WHY; }no GPU: cvt-tiny on the CPU"; fi
}
step_train_vit_b16() {
  if [ $have_gpu = 1 ]; then train train_vit_b16 vit-b16 "${TRAIN_GPU[@]}" "${TRAIN_GPU_VIT_B16[@]}"
  else train train_vit_b16 vit-ti16 "${TRAIN_CPU[@]}" "${TRAIN_CPU_VIT_B16[@]}"; WHY="${WHY:+$WHY; }no GPU: vit-ti16 on the CPU"; fi
}

step_memcheck() {
  command -v compute-sanitizer > /dev/null || { ST=skipped WHY="compute-sanitizer not found"; return; }
  local end=$((SECONDS + LIMIT)) progs=() p i
  [ -x "$BUILD/bin/test_backend_ops" ] && progs+=(test_backend_ops)
  mapfile -t -O ${#progs[@]} progs < <(cuda_test_programs | grep -vx test_kernel_math)  # that one is host code
  [ -x "$BUILD/bin/test_cuda_models" ] && progs+=(test_cuda_models)
  # An equal share of the time left for each program: each gets its first test cases checked.
  for i in "${!progs[@]}"; do
    p=${progs[$i]}
    local share=$(((end - SECONDS) / (${#progs[@]} - i))) log=$LOGS/memcheck.$p.log t0=$SECONDS
    if [ $share -lt 15 ]; then record "memcheck:$p" skipped "out of time" 0 - ""; continue; fi
    run_logged $share "$log" compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 50 \
      "$BUILD/bin/$p" --duration=true
    local rc=$? st why=""
    st=$(status_of $rc)
    [ $rc = 99 ] && why="memcheck found errors"
    [ $st = timeout ] && why="cut after $share s (its share of the time left): checked up to there"
    record "memcheck:$p" "$st" "$why" $((SECONDS - t0)) $rc "$log" memcheck
  done
}

# ---------------------------------------------------------------------------------------------- the round
trap 'find "$OUT/train" -name "*.safetensors" -delete 2>/dev/null; py rebuild' EXIT
trap 'echo "gpu_round: interrupted" >&2; exit 143' TERM INT
python3 - "$OUT/round.json" "$mode" "$git_rev" "$deadline" "$jobs" "${selected:-all}" "$OUT" \
  "$( [ $have_gpu = 1 ] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1)" <<'PY'
import datetime, json, sys
path, mode, rev, deadline, jobs, only, out, gpu = sys.argv[1:9]
with open(path, "w") as fh:
    json.dump(dict(mode=mode, git_rev=rev, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   deadline_s=int(deadline), jobs=int(jobs), gpu=gpu or None, only=only.split(), out=out), fh)
PY
: > "$OUT/steps.jsonl"
echo "gpu_round: $mode, deadline $deadline s, -j$jobs, out $OUT"
configured=1
while read -r name where expect cap _; do
  [ -z "$name" ] && continue
  [ -n "$selected" ] && [[ $selected != *" $name "* ]] && continue
  expect=$((expect * scale)) cap=$((cap * scale))
  left=$((deadline - SECONDS))
  if [ "$where" = gpu ] && [ $have_gpu = 0 ]; then
    record "$name" skipped "no GPU$([ $dry = 1 ] && echo ' (dry run)')" 0 - ""; continue
  fi
  if [ $configured = 0 ] && [ "$name" != env ]; then
    record "$name" skipped "configure failed (logs/configure.log)" 0 - ""; continue
  fi
  if [ $left -lt "$expect" ]; then
    record "$name" skipped "out of time (needs ~$expect s, $left s left)" 0 - ""; continue
  fi
  LIMIT=$left; [ "$cap" -gt 0 ] && [ "$cap" -lt $left ] && LIMIT=$cap
  ST="" WHY="" RC="" LOG="" KIND=plain ARG=""
  t0=$SECONDS
  echo "$(printf '%6ss' $SECONDS)  -- $name (limit $LIMIT s)"
  "step_$name"
  if [ -n "$RC" ] || [ -n "$ST" ]; then
    [ -z "$ST" ] && ST=$(status_of "${RC:-1}")
    [ "$ST" = timeout ] && [ -z "$WHY" ] && WHY="timed out after $LIMIT s"
    record "$name" "$ST" "$WHY" $((SECONDS - t0)) "${RC:--}" "$LOG" "$KIND" "$ARG"
    # A training run's loss is known once its record is parsed: a loss that did not fall fails it.
    [[ $name == train_* ]] && loss_check "$name" && \
      record "$name" "$ST" "$WHY" $((SECONDS - t0)) "${RC:--}" "$LOG" "$KIND" "$ARG" > /dev/null
  fi
  [ "$name" = configure ] && [ "$ST" != pass ] && configured=0
done <<<"$STEPS"
echo
cat "$OUT/summary.txt"
echo "results: $OUT"
