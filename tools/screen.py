#!/usr/bin/env python3
"""Compares training recipes on validation only, over several seeds (tools only; standard library).

One run's numbers move with the seed and even with the kernels' float rounding (the README's rerun of the
`cpu` recipe: validation 0.824 -> 0.810, Testing 0.589 -> 0.518), so a variant is judged on the mean of
several seeds. Each run is given the Training folder alone as a flat data set (class folders), so no
Testing number can exist to look at; the split is the recipe's (grouped by default), so validation never
holds a near-copy of a training image.

    python3 tools/screen.py --data ../shared/datasets/brain-tumor-mri --seeds 1,2,3 \\
        --variant "base=" --variant "jitter 0.7=--brightness 0.7 --contrast 0.7" [--recipe cpu] [--out runs/screen]

Per variant and seed: the best epoch by validation accuracy (as the trainer picks it), its validation
accuracy and its accuracy on the brightened validation images (the scanner check). Per variant: the mean
and standard deviation over seeds of both and of their mean, the README's selection score. A run that
exists already (its metrics.jsonl has every epoch) is read, not trained again, so a screen can be resumed.

--cross-source adds a probe of the shift that Testing holds and validation lacks. Training's images come from
two sources, told apart by their size in this copy (256x256, downscaled from 512x512, or anything else):
glioma only from the first, meningioma mostly (689 of 822), no_tumor mostly from the other (347 of 395),
pituitary almost only from the first (819 of 827); Testing's novel glioma come from the other source, which
no training glioma shows. The probe recreates that situation with Training alone: in every class, a source
holding fewer images than the class's other source (and at least --min-probe of them) is taken out of
training entirely -- meningioma from the other source (133), no_tumor from the first (48) -- and the best
checkpoint is scored on those images: how well a class is recognised in a source it was never shown in.
"""
import argparse
import json
import os
import shlex
import statistics
import struct
import subprocess
import sys


def jpeg_size(path):
    """(width, height) from a JPEG's start-of-frame marker, or None when the file is not a JPEG."""
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None


def cross_source_view(training, out, min_probe):
    """Builds OUT/train/<class> and OUT/probe/<class> (symbolic links): each class's smaller source, when it
    holds at least min_probe images, goes to the probe only. Returns {class: (probe count, source)}."""
    held = {}
    for cls in sorted(os.listdir(training)):
        folder = os.path.join(training, cls)
        if not os.path.isdir(folder):
            continue
        files = sorted(os.listdir(folder))
        first = [f for f in files if jpeg_size(os.path.join(folder, f)) == (256, 256)]
        other = [f for f in files if f not in set(first)]
        smaller, name = (first, "256x256") if len(first) < len(other) else (other, "other sizes")
        probe = smaller if len(smaller) >= min_probe else []
        if probe:
            held[cls] = (len(probe), name)
        for split, names in (("train", [f for f in files if f not in set(probe)]), ("probe", probe)):
            if not names:
                continue
            os.makedirs(os.path.join(out, split, cls), exist_ok=True)
            for f in names:
                link = os.path.join(out, split, cls, f)
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(os.path.join(folder, f)), link)
    return held


def probe_accuracy(tessera, run, probe):
    """The run's best checkpoint's accuracy on the probe images (cached in RUN/probe.json)."""
    cache = os.path.join(run, "probe.json")
    if not os.path.exists(cache):
        result = subprocess.run([tessera, "eval", "--checkpoint", run, "--data", probe, "--split", "", "--json"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"screen.py: evaluating {run} on the probe failed: {result.stderr.strip()}")
        with open(cache, "w") as fh:
            fh.write(result.stdout)
    with open(cache) as fh:
        report = json.load(fh)
    return report["accuracy"]


def best_epoch(metrics_path):
    """(epochs logged, the best epoch's record): the first epoch with the highest validation accuracy."""
    epochs = []
    with open(metrics_path) as fh:
        for line in fh:
            record = json.loads(line)
            if record.get("event") == "epoch":
                epochs.append(record)
    if not epochs:
        return 0, None
    best = max(epochs, key=lambda r: (r["val_accuracy"], -r["epoch"]))
    return len(epochs), best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="a data set with a Training folder")
    ap.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME=OPTIONS: tessera train options on top of the recipe (repeat)")
    ap.add_argument("--recipe", default="cpu")
    ap.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (for every variant)")
    ap.add_argument("--tessera", default="build/bin/tessera")
    ap.add_argument("--out", default="runs/screen")
    ap.add_argument("--extra", default="", help="options for every run (e.g. --max-train-samples 256)")
    ap.add_argument("--cross-source", action="store_true",
                    help="hold each class's smaller source out of training and score the runs on it (the probe)")
    ap.add_argument("--min-probe", type=int, default=30, help="the smallest source held out by --cross-source")
    args = ap.parse_args()

    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        variants = [v.split("=", 1) for v in args.variant]
        assert all(len(v) == 2 and v[0] for v in variants)
    except (ValueError, AssertionError):
        sys.exit("screen.py: --seeds takes integers like 1,2,3 and --variant takes NAME=OPTIONS")
    if not os.path.isdir(os.path.join(args.data, "Training")):
        sys.exit(f"screen.py: {args.data} has no Training folder")
    os.makedirs(args.out, exist_ok=True)
    view = os.path.join(args.data, "Training")
    probe = None
    if args.cross_source:
        base = os.path.join(args.out, "cross-source")
        held = cross_source_view(view, base, args.min_probe)
        view, probe = os.path.join(base, "train"), os.path.join(base, "probe")
        print("probe (held out of training):", ", ".join(f"{c} {n} ({src})" for c, (n, src) in held.items()))

    rows = []
    for name, options in variants:
        scores = []
        for seed in seeds:
            run = os.path.join(args.out, f"{name.replace(' ', '_')}-seed{seed}")
            metrics = os.path.join(run, "metrics.jsonl")
            done, best = best_epoch(metrics) if os.path.exists(metrics) else (0, None)
            command = [args.tessera, "train", "--recipe", args.recipe, "--data", view, "--seed", str(seed),
                       "--no-progress", *shlex.split(args.extra), *shlex.split(options)]
            if args.epochs:
                command += ["--epochs", str(args.epochs)]
            if best is None or (args.epochs and done < args.epochs):
                if os.path.exists(run):
                    command = [args.tessera, "train", "--resume", run, "--no-progress"]
                else:
                    command += ["--out", run]
                print("$", shlex.join(command), flush=True)
                if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
                    sys.exit(f"screen.py: the run {run} failed (its error is above)")
                done, best = best_epoch(metrics)
            val, bright = best["val_accuracy"], best["val_brightened_accuracy"]
            cross = probe_accuracy(args.tessera, run, probe) if probe else None
            scores.append((val, bright, (val + bright) / 2) + ((cross, (val + cross) / 2) if probe else ()))
            print(f"{name} seed {seed}: best epoch {best['epoch']} of {done}, validation {val:.4f}, "
                  f"brightened {bright:.4f}" + (f", probe {cross:.4f}" if probe else ""), flush=True)
        rows.append((name, options, scores))

    def mean_sd(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    headers = ["validation", "brightened", "mean of the two"] + (["probe", "mean of validation and probe"]
                                                                 if probe else [])
    print("\n| variant | options | seeds | " + " | ".join(headers) + " |")
    print("| --- | --- | ---: |" + " ---: |" * len(headers))
    for name, options, scores in rows:
        cols = [mean_sd([s[i] for s in scores]) for i in range(len(headers))]
        print(f"| {name} | `{options or '(recipe)'}` | {len(scores)} | " + " | ".join(cols) + " |")
    print(f"\n(mean ± standard deviation over seeds {args.seeds}; recipe {args.recipe}; Training only)")


if __name__ == "__main__":
    main()
