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
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys


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
            scores.append((val, bright, (val + bright) / 2))
            print(f"{name} seed {seed}: best epoch {best['epoch']} of {done}, validation {val:.4f}, "
                  f"brightened {bright:.4f}", flush=True)
        rows.append((name, options, scores))

    def mean_sd(values):
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"

    print(f"\n| variant | options | seeds | validation | brightened | mean (the score) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, options, scores in rows:
        cols = [mean_sd([s[i] for s in scores]) for i in range(3)]
        print(f"| {name} | `{options or '(recipe)'}` | {len(scores)} | {cols[0]} | {cols[1]} | {cols[2]} |")
    print(f"\n(mean ± standard deviation over seeds {args.seeds}; recipe {args.recipe}; Training only)")


if __name__ == "__main__":
    main()
