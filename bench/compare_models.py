#!/usr/bin/env python3
"""Whole-model CPU steps side by side: `tessera bench` against PyTorch eager / bf16 autocast / torch.compile,
timm and ONNX Runtime, alternated in one run on one machine (measuring rules: bench/README.md).

Environment (tools only: nothing in tessera's build or tests needs Python), outside the repository:

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu  # else PyPI's torch
    /work/venv-bench/bin/pip install transformers timm onnx onnxruntime numpy

Usage (tessera built with `ninja -C build-cpu tessera`):

    /work/venv-bench/bin/python bench/compare_models.py [--models cvt-tiny,cvt-13,vit-b16] [--modes train,infer]
        [--batches 1,8,32] [--image-size 224 | --image-size cvt-tiny=64,vit-b16=224] [--threads 2] [--steps 10]
        [--warmup 2] [--rounds 3] [--contenders tessera,torch-eager,...] [--quick] [--tessera PATH]
        [--json-out bench/compare_models.json] [--svg bench/compare_models.svg]

Every contender runs the step `tessera bench` runs, so the rows time the same work:
  train  input uniform(-1, 1) [batch, channels, S, S] fp32, labels i % num_labels, training mode (dropout and
         drop path as configured), cross-entropy, backward, clip_grad_norm_(1.0), AdamW(lr 1e-3, betas
         (0.9, 0.999), eps 1e-8, weight decay 0.01), zero_grad(set_to_none=True);
  infer  eval mode, no autograd, logits of the same input.
The PyTorch models are transformers' classes built from the config that tessera's JSON prints (random init),
so both sides have the same architecture, labels, channels and image size. Per round each contender runs
`warmup` untimed steps, then `steps` timed ones (median and spread of those); rounds alternate the
contenders (tessera, then each PyTorch one, then again) so slow drift of a shared machine hits all of them,
and a contender's figure is the median of its round medians, with the spread of those medians beside it.
GFLOP/s use tessera's flops_per_step for every row, so each row is credited with the same work.
"""
import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

DEFAULT_SIZE = {"cvt-tiny": 64, "cvt-13": 224, "vit-b16": 224}  # the sizes tessera's presets are used at
CONTENDERS = ["tessera", "torch-eager", "torch-bf16", "torch-compile", "timm", "onnxruntime"]
TESSERA_KEYS = ["model", "mode", "device", "precision", "batch", "image_size", "threads", "steps", "warmup",
                "step_seconds_median", "step_seconds_min", "step_seconds_max", "step_seconds_p25",
                "step_seconds_p75", "images_per_second", "forward_flops_per_image", "flops_per_step",
                "gflops_per_second", "peak_memory_bytes", "config"]
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def short(e):
    """One line of an exception (or stderr), enough to tell why a contender was skipped."""
    text = str(e).strip().splitlines()
    return (type(e).__name__ + ": " if isinstance(e, BaseException) else "") + (text[-1] if text else "")[:200]


def spread(times):
    """Median, min, p25, p75, max of step times in seconds; quartiles interpolate like numpy's default."""
    s = sorted(times)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return dict(median=statistics.median(s), min=s[0], p25=q[0], p75=q[2], max=s[-1])


def time_steps(step, steps, warmup):
    """Per-step wall-clock seconds of `steps` calls after `warmup` untimed ones (CPU work is synchronous)."""
    for _ in range(warmup):
        step()
    out = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------------- tessera
def run_tessera(args, model, mode, batch, size):
    """One `tessera bench --json` process: its JSON object, checked against the schema and the request."""
    cmd = [args.tessera, "bench", mode, "--model", model, "--batch", str(batch), "--image-size", str(size),
           "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {short(p.stderr or p.stdout)}")
    try:
        out = json.loads(p.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"{args.tessera} bench: stdout is not one JSON object ({e})") from None
    missing = [k for k in TESSERA_KEYS if k not in out]
    if missing:
        raise RuntimeError(f"{args.tessera} bench --json: missing field(s) {', '.join(missing)}")
    asked = dict(model=model, mode=mode, batch=batch, image_size=size, threads=args.threads)
    wrong = [f"{k} {out[k]!r} (asked {v!r})" for k, v in asked.items() if out[k] != v]
    if wrong:
        raise RuntimeError(f"{args.tessera} bench --json: {', '.join(wrong)}")
    return out


# ---------------------------------------------------------------------------------------------------- PyTorch side
def hf_model(config, size):
    """transformers' classifier for tessera's config, random init. ViT's position embeddings follow the image
    size, so the row's size overrides the config's (CvT has no such field)."""
    import torch
    import transformers
    cfg = dict(config)
    if cfg.get("model_type") == "vit":
        cfg["image_size"] = size
        cls, conf = transformers.ViTForImageClassification, transformers.ViTConfig
    elif cfg.get("model_type") == "cvt":
        cls, conf = transformers.CvtForImageClassification, transformers.CvtConfig
    else:
        raise ValueError(f"tessera's config has model_type {cfg.get('model_type')!r}; expected 'cvt' or 'vit'")
    torch.manual_seed(0)
    return cls(conf.from_dict(cfg))


class Row:
    """The inputs and models of one (model, mode, batch, size), built once and kept across rounds so a
    round times steps, not construction. The three HF variants share one model and optimizer: they differ
    only in how the step runs, and one copy of ViT-B/16's weights and AdamW state is 1.4 GB."""

    def __init__(self, args, mode, batch, size, config, parameters=None):
        import torch
        self.args, self.mode, self.batch, self.size, self.config = args, mode, batch, size, config
        self.parameters = parameters  # tessera's count, when its JSON has one
        self.num_labels = len(config["id2label"]) if config.get("id2label") else int(config["num_labels"])
        channels = int(config.get("num_channels", 3))
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(batch, channels, size, size, generator=g) * 2 - 1
        self.y = torch.arange(batch) % self.num_labels
        self._hf = None
        self.compiled = None  # torch.compile's module, kept to drop its graphs after the row
        self.steps, self.first_step_s = {}, {}

    def checked(self, model, what):
        """The model, if its parameter count is tessera's: a different count means a different architecture,
        and the row would compare unlike work."""
        n = sum(p.numel() for p in model.parameters())
        if self.parameters is not None and n != self.parameters:
            raise RuntimeError(f"{what} has {n:,} parameters, tessera's model {self.parameters:,}")
        return model

    def hf(self):
        if self._hf is None:
            model = self.checked(hf_model(self.config, self.size), "transformers' model")
            self.attention = getattr(model.config, "_attn_implementation", None)  # sdpa / eager: worth knowing
            self._hf = (model.train() if self.mode == "train" else model.eval(), self.optimizer(model))
        return self._hf

    def optimizer(self, model):
        import torch
        if self.mode != "train":
            return None
        # fused: PyTorch's fastest AdamW on the CPU (its default there is a loop over tensors); same update.
        kw = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        try:
            self.adamw = "fused"
            return torch.optim.AdamW(model.parameters(), fused=True, **kw)
        except (RuntimeError, TypeError):  # a build without the fused CPU kernel
            self.adamw = "default"
            return torch.optim.AdamW(model.parameters(), **kw)

    def step_fn(self, forward, model, opt, autocast=False):
        """The step tessera times: forward to logits, then (train) loss, backward, clipping, AdamW."""
        import torch
        import torch.nn.functional as F
        x, y = self.x, self.y
        if self.mode == "infer":
            def infer():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    forward(x)
            return infer

        def train():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = F.cross_entropy(forward(x), y)  # autocast runs cross-entropy in fp32
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return train

    def step(self, contender):
        """A callable running one step of `contender`, built on first use; that first call (model build,
        optimizer state, oneDNN primitives, torch.compile's compilation, ONNX export) is timed apart here
        and never with the steps. Raises with the reason when the contender cannot run on this row."""
        if contender not in self.steps:
            t0 = time.perf_counter()
            fn = self.make_step(contender)
            fn()
            self.first_step_s[contender] = time.perf_counter() - t0
            self.steps[contender] = fn
        return self.steps[contender]

    def make_step(self, contender):
        import torch
        if contender in ("torch-eager", "torch-bf16"):
            model, opt = self.hf()
            return self.step_fn(lambda x: model(pixel_values=x).logits, model, opt, contender == "torch-bf16")
        if contender == "torch-compile":
            model, opt = self.hf()
            self.compiled = torch.compile(model)  # inductor, the default backend; compiles on the first call
            return self.step_fn(lambda x: self.compiled(pixel_values=x).logits, model, opt)
        if contender == "timm":
            return self.timm_step()
        if contender == "onnxruntime":
            return self.ort_step()
        raise ValueError(contender)

    def timm_step(self):
        if self.config.get("model_type") != "vit":
            raise NotApplicable("timm's vit_base_patch16_224 is compared on vit-b16 rows only")
        import timm  # ImportError: skipped with the reason
        import torch
        torch.manual_seed(0)
        model = self.checked(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=self.num_labels,
                                               img_size=self.size, in_chans=self.x.shape[1]), "timm's model")
        model = model.train() if self.mode == "train" else model.eval()
        return self.step_fn(model, model, self.optimizer(model))

    def ort_step(self):
        if self.mode != "infer":
            raise NotApplicable("ONNX Runtime runs inference rows only")
        import onnxruntime as ort  # ImportError: skipped with the reason
        import torch
        model = self.checked(hf_model(self.config, self.size), "transformers' model").eval()

        class Logits(torch.nn.Module):  # the exporter wants tensors out, not a ModelOutput
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(pixel_values=x).logits

        # The TorchScript exporter: the torch.export one needs the extra onnxscript package.
        kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = self.args.threads, 1
        with tempfile.TemporaryDirectory() as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, every row
            path = os.path.join(tmp, "model.onnx")
            # Fixed batch: no dynamic axes, as tessera's shapes are fixed too.
            torch.onnx.export(Logits(model), (self.x,), path, opset_version=17, input_names=["pixel_values"],
                              output_names=["logits"], **kw)
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])  # reads the file now
        feed = {"pixel_values": self.x.numpy()}
        return lambda: sess.run(None, feed)


class Skip(Exception):
    """A contender that cannot run on this row, for a reason that is not its own failure."""


class NotApplicable(Skip):
    """A contender that has no such row (timm on CvT, ONNX Runtime training): left out of the table."""


# ---------------------------------------------------------------------------------------------------- one row
def measure_row(args, model, mode, batch, size):
    """Rounds of every contender on one row; returns the row's record with per-round stats and summaries."""
    rec = dict(model=model, mode=mode, batch=batch, image_size=size, contenders={})
    res = {c: dict(status="ok", rounds=[]) for c in args.contenders}
    row = None
    for r in range(args.rounds):
        for c in args.contenders:
            cr = res[c]
            if cr["status"] != "ok":
                continue
            try:
                if c == "tessera":
                    out = run_tessera(args, model, mode, batch, size)
                    raw = {k: v for k, v in out.items() if k != "config"}  # the config once per row is enough
                    stats = {k: out["step_seconds_" + k] for k in ("median", "min", "p25", "p75", "max")}
                    result = dict(stats, json=raw)
                    rec.setdefault("tessera", raw)  # flops and parameters: the same every round
                    rec["config"] = out["config"]
                else:
                    if "config" not in rec:
                        raise Skip("needs tessera's config, and `tessera bench` did not run (see its row)")
                    if row is None:
                        row = Row(args, mode, batch, size, rec["config"], rec["tessera"].get("parameters"))
                    times = time_steps(row.step(c), args.steps, args.warmup)
                    result = dict(spread(times), step_seconds=times)
                cr["rounds"].append(result)
            except Skip as e:
                cr.update(status="n/a" if isinstance(e, NotApplicable) else "skipped", reason=str(e))
            except ImportError as e:
                cr.update(status="skipped", reason=f"not installed: {e.name or short(e)}")
            except Exception as e:  # noqa: BLE001 - one contender failing must not lose the others
                cr.update(status="error", reason=short(e))
            print(f"  round {r + 1}/{args.rounds} {c}: " + (
                f"{cr['rounds'][-1]['median'] * 1e3:.1f} ms" if cr["status"] == "ok" else
                f"{cr['status']} ({cr['reason']})"), flush=True)
    flops = rec.get("tessera", {}).get("flops_per_step")
    for c, cr in res.items():
        if row is not None and c in row.first_step_s:
            cr["first_step_seconds"] = row.first_step_s[c]
        if cr["status"] == "ok" and cr["rounds"]:
            meds = [x["median"] for x in cr["rounds"]]
            m = statistics.median(meds)
            cr.update(step_seconds=m, round_medians_min=min(meds), round_medians_max=max(meds),
                      images_per_second=batch / m, gflops_per_second=flops / m / 1e9 if flops else None)
        rec["contenders"][c] = cr
    t = res.get("tessera", {}).get("step_seconds")
    for c, cr in res.items():
        if t and cr.get("step_seconds"):
            cr["tessera_speedup"] = cr["step_seconds"] / t  # > 1: tessera faster
    for key, attr in (("torch_adamw", "adamw"), ("transformers_attention", "attention")):
        if row is not None and hasattr(row, attr):
            rec[key] = getattr(row, attr)
    if row is not None and row.compiled is not None:
        import torch
        torch._dynamo.reset()  # the next row's shapes would recompile anyway; drop this one's graphs
    return rec


# ---------------------------------------------------------------------------------------------------- output
def print_table(rows):
    head = ["model", "mode", "batch", "size", "contender", "ms/step", "round spread ms", "images/s", "GFLOP/s",
            "tessera/x", "first step s"]
    body, notes = [], []
    for rec in rows:
        for c, cr in rec["contenders"].items():
            if cr["status"] == "n/a":
                continue
            key = [rec["model"], rec["mode"], str(rec["batch"]), str(rec["image_size"]), c]
            first = f"{cr['first_step_seconds']:.1f}" if "first_step_seconds" in cr else ""
            if cr["status"] != "ok":
                body.append(key + [cr["status"], "", "", "", "", first])
                notes.append(f"{' '.join(key)}: {cr['status']}: {cr['reason']}")
                continue
            g, sp = cr.get("gflops_per_second"), cr.get("tessera_speedup")
            body.append(key + [f"{cr['step_seconds'] * 1e3:.1f}",
                               f"{cr['round_medians_min'] * 1e3:.1f}-{cr['round_medians_max'] * 1e3:.1f}",
                               f"{cr['images_per_second']:.1f}", f"{g:.1f}" if g else "",
                               f"{sp:.2f}" if sp else "", first])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(v.rjust(w) if i >= 5 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    print("\n" + line(head) + "\n" + line(["-" * w for w in widths]))
    for r in body:
        print(line(r))
    print("\nms/step: median over rounds of each round's median step; round spread: the lowest and highest round "
          "median;\ntessera/x: the contender's ms / tessera's (> 1: tessera faster); GFLOP/s: tessera's flops_per_step "
          "/ ms/step;\nfirst step s: building, the first step and torch.compile's compilation or the ONNX export, "
          "never timed with the steps")
    for n in notes:
        print("  " + n)


COLORS = ["#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # tessera in black


def write_svg(rows, path):
    """Images/s against batch, one panel per (model, mode), one line per contender. Batches are evenly
    spaced (they are usually powers of two, where a log axis would look the same) and y starts at 0."""
    panels = {}
    for rec in rows:
        for c, cr in rec["contenders"].items():
            if cr.get("images_per_second"):
                panels.setdefault((rec["model"], rec["mode"], rec["image_size"]), {}).setdefault(c, []).append(
                    (rec["batch"], cr["images_per_second"]))
    W, H, ml, mr, mt, mb = 420, 300, 60, 20, 30, 90
    cols = 2
    nrows = max(1, (len(panels) + cols - 1) // cols)
    esc = lambda s: str(s).replace("&", "&amp;").replace("<", "&lt;")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * nrows}" '
           f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for i, ((model, mode, size), lines) in enumerate(panels.items()):  # in the order measured
        ox, oy = (i % cols) * W, (i // cols) * H
        pw, ph = W - ml - mr, H - mt - mb
        batches = sorted({b for pts in lines.values() for b, _ in pts})
        top = max(v for pts in lines.values() for _, v in pts)
        # Gridlines at a round step (1, 2 or 5 times a power of ten) giving 3 to 6 lines above 0.
        tick = next(m * 10 ** e for e in range(math.floor(math.log10(top)) - 1, 99) for m in (1, 2, 5)
                    if top / (m * 10 ** e) <= 5)
        ymax = tick * math.ceil(top * 1.05 / tick)
        xpos = lambda b: ox + ml + (pw * (batches.index(b) + 0.5) / len(batches))
        ypos = lambda v: oy + mt + ph * (1 - v / ymax)
        out.append(f'<text x="{ox + W / 2}" y="{oy + 18}" text-anchor="middle" font-size="13">'
                   f'{esc(model)} {esc(mode)}, {size} px: images/s vs batch</text>')
        out.append(f'<rect x="{ox + ml}" y="{oy + mt}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for k in range(round(ymax / tick) + 1):
            v = k * tick
            out.append(f'<line x1="{ox + ml}" x2="{ox + ml + pw}" y1="{ypos(v):.1f}" y2="{ypos(v):.1f}" '
                       f'stroke="#ddd"/><text x="{ox + ml - 4}" y="{ypos(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
        for b in batches:
            out.append(f'<text x="{xpos(b):.1f}" y="{oy + mt + ph + 14}" text-anchor="middle">{b}</text>')
        out.append(f'<text x="{ox + ml + pw / 2}" y="{oy + mt + ph + 28}" text-anchor="middle">batch</text>')
        out.append(f'<text transform="translate({ox + 14},{oy + mt + ph / 2}) rotate(-90)" '
                   'text-anchor="middle">images/s</text>')
        for j, c in enumerate(c for c in CONTENDERS if c in lines):
            color = COLORS[CONTENDERS.index(c) % len(COLORS)]
            pts = sorted(lines[c])
            xy = " ".join(f"{xpos(b):.1f},{ypos(v):.1f}" for b, v in pts)
            out.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"/>')
            out += [f'<circle cx="{xpos(b):.1f}" cy="{ypos(v):.1f}" r="3" fill="{color}"/>' for b, v in pts]
            lx, ly = ox + ml + (j % 3) * (pw / 3), oy + mt + ph + 46 + (j // 3) * 16
            out.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" '
                       f'stroke-width="2"/><text x="{lx + 22}" y="{ly}">{esc(c)}</text>')
    out.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(out) + "\n")


def machine_info(args):
    """What the numbers were measured on and with: CPU, load, package versions, the commit."""
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None) \
        if os.path.exists("/proc/cpuinfo") else platform.processor()
    versions = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "timm", "onnx", "onnxruntime", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is recorded as missing
            versions[mod] = None
    sys.path.insert(0, HERE)
    from pytorch_baselines import git_commit
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True).stdout.strip() != "" if git_commit() else None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), cpu_model=cpu,
                cpu_count=os.cpu_count(), load_average_start=os.getloadavg(), threads=args.threads,
                versions=versions, commit=git_commit(), uncommitted_changes=dirty, argv=sys.argv[1:],
                tessera=args.tessera, steps=args.steps, warmup=args.warmup, rounds=args.rounds, quick=args.quick)


# ---------------------------------------------------------------------------------------------------- main
def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    csv = lambda s: [x.strip() for x in s.split(",") if x.strip()]
    ap.add_argument("--tessera", default=os.path.join(REPO, "build-cpu", "bin", "tessera"),
                    help="the tessera binary (default: build-cpu/bin/tessera)")
    ap.add_argument("--models", type=csv, default=list(DEFAULT_SIZE), help="subset of " + ",".join(DEFAULT_SIZE))
    ap.add_argument("--modes", type=csv, default=["train", "infer"], help="train,infer or one of them")
    ap.add_argument("--batches", type=csv, default=None, help="batch sizes (default 1,8,32; --quick: 2)")
    ap.add_argument("--image-size", default="",
                    help="one size for every model, or MODEL=S pairs (default "
                         + ",".join(f"{m}={s}" for m, s in DEFAULT_SIZE.items()) + ")")
    ap.add_argument("--threads", type=int, default=2, help="threads for every contender (default 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per round (default 10; --quick: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per round (default 2; --quick: 1)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds, at least 2 (default 3; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: batch 2, 2 rounds of 1 warm-up + 2 steps")
    ap.add_argument("--contenders", type=csv, default=list(CONTENDERS), help="subset of " + ",".join(CONTENDERS))
    ap.add_argument("--json-out", default=os.path.join(HERE, "compare_models.json"))
    ap.add_argument("--svg", default=os.path.join(HERE, "compare_models.svg"))
    args = ap.parse_args()
    q = args.quick
    args.steps = args.steps if args.steps is not None else (2 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 2)
    args.rounds = args.rounds if args.rounds is not None else (2 if q else 3)
    bad = [f"--models: unknown model '{m}' (known: {', '.join(DEFAULT_SIZE)})" for m in args.models
           if m not in DEFAULT_SIZE]
    bad += [f"--modes: unknown mode '{m}' (train, infer)" for m in args.modes if m not in ("train", "infer")]
    bad += [f"--contenders: unknown contender '{c}' (known: {', '.join(CONTENDERS)})" for c in args.contenders
            if c not in CONTENDERS]
    try:
        args.batches = [int(b) for b in (args.batches or (["2"] if q else ["1", "8", "32"]))]
    except ValueError:
        bad.append(f"--batches: not a list of integers: {','.join(args.batches)}")
        args.batches = []
    args.sizes = dict(DEFAULT_SIZE)
    for item in csv(args.image_size):
        name, _, val = item.rpartition("=")
        if name and name not in DEFAULT_SIZE:
            bad.append(f"--image-size: unknown model '{name}' in '{item}'")
        elif not val.isdigit() or int(val) <= 0:
            bad.append(f"--image-size: '{item}' is not a positive size (S or MODEL=S)")
        else:
            args.sizes.update({name: int(val)} if name else {m: int(val) for m in DEFAULT_SIZE})
    for name, v, low in (("--threads", args.threads, 1), ("--steps", args.steps, 1), ("--warmup", args.warmup, 0),
                         ("--rounds", args.rounds, 2)):
        if v < low:
            bad.append(f"{name}: must be >= {low}, got {v}")
    bad += [f"--batches: batch must be >= 1, got {b}" for b in args.batches if b < 1]
    if "tessera" in args.contenders and not os.access(args.tessera, os.X_OK):
        bad.append(f"--tessera: {args.tessera} is not an executable (build it with `ninja -C build-cpu tessera`)")
    if bad:
        ap.error("; ".join(bad))
    return args


def main():
    args = parse_args()
    # Same thread count everywhere; OpenMP and MKL read these when torch is first imported, so set them first.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS"):
        os.environ[var] = str(args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
    if torch is None:
        for c in [c for c in args.contenders if c != "tessera"]:
            print(f"{c}: skipped: torch is not installed")
        args.contenders = [c for c in args.contenders if c == "tessera"]
    meta = machine_info(args)
    print(f"# {meta['cpu_model']}, {args.threads} threads, torch {meta['versions']['torch']}, "
          f"transformers {meta['versions']['transformers']}, commit {meta['commit']}, {meta['date']}", flush=True)
    rows = []
    for model in args.models:
        for mode in args.modes:
            for batch in args.batches:
                size = args.sizes[model]
                print(f"{model} {mode} batch {batch} {size} px", flush=True)
                rows.append(measure_row(args, model, mode, batch, size))
                meta["load_average_end"] = os.getloadavg()
                meta["python_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                # Rewritten after every row: a run cut short still leaves what it measured.
                for path in (args.json_out, args.svg):
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                with open(args.json_out, "w") as fh:
                    json.dump(dict(meta, rows=rows), fh, indent=1)
                write_svg(rows, args.svg)
    print_table(rows)
    # Others' load: the 1-minute average before this run, and at its end less this run's own threads.
    others = max(meta["load_average_start"][0], meta["load_average_end"][0] - args.threads)
    if others > os.cpu_count() - args.threads + 0.5:
        print(f"\nthe machine was busy (other load about {others:.1f} on {os.cpu_count()} cores): PyTorch's "
              "threads wait on each other when a core is taken, so these ratios are not a measurement")
    print(f"\nwrote {args.json_out} and {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
