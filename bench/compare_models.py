#!/usr/bin/env python3
"""Whole-model CPU steps side by side: `tessera bench` against PyTorch eager / bf16 autocast / torch.compile,
timm and ONNX Runtime, alternated in one run on one machine (measuring rules: bench/README.md).

Environment (tools only: nothing in tessera's build or tests needs Python), outside the repository:

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu  # else PyPI's torch
    /work/venv-bench/bin/pip install transformers timm onnx onnxruntime numpy

Usage (tessera built with `ninja -C build-cpu tessera`):

    /work/venv-bench/bin/python bench/compare_models.py [--models cvt-tiny,cvt-13,vit-b16] [--modes train,infer]
        [--batches 1,8,32] [--image-size 224 | --image-size cvt-tiny=64,vit-b16=224] [--threads 1,2] [--steps 10]
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
Each PyTorch / timm / ONNX Runtime contender runs in a process of its own, so its peak memory is the
high-water mark of its resident set (VmHWM), as tessera's `peak_memory_bytes` is of tessera's process.
Every row is measured at each of --threads' counts; other processes' CPU use during each row is measured
from /proc/stat and reported when it would disturb the figures.
"""
import argparse
import datetime
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

DEFAULT_SIZE = {"cvt-tiny": 64, "cvt-13": 224, "vit-b16": 224}  # the sizes tessera's presets are used at
CONTENDERS = ["tessera", "tessera-bf16", "torch-eager", "torch-bf16", "torch-compile", "timm", "onnxruntime"]
TESSERA_KEYS = ["model", "mode", "device", "precision", "batch", "image_size", "threads", "steps", "warmup",
                "step_seconds_median", "step_seconds_min", "step_seconds_max", "step_seconds_p25",
                "step_seconds_p75", "images_per_second", "forward_flops_per_image", "flops_per_step",
                "gflops_per_second", "peak_memory_bytes", "config"]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")
BUSY_CORES = 0.1  # others' CPU use, in cores, above which a row's ratios are called disturbed
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


def peak_rss(pid):
    """The high-water mark of a live process's resident set in bytes (VmHWM, the figure tessera reports)."""
    with open(f"/proc/{pid}/status") as fh:
        return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("VmHWM:"))


def cpu_sample():
    """(wall seconds, busy CPU seconds of the cores this process may use, CPU seconds of this process and
    its reaped children). /proc/stat counts every process on the machine; os.times() counts ours, children
    included once waited for, so each row samples after its processes have exited."""
    cpus = os.sched_getaffinity(0)
    busy = 0
    with open("/proc/stat") as fh:
        for ln in fh:
            name, *f = ln.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                busy += sum(int(x) for x in f[:8]) - int(f[3]) - int(f[4])  # less idle and iowait; guest is in user
    t = os.times()
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + t.children_system


def others_cpu(before, after):
    """Other processes' CPU use between two samples: average cores busy, and the share of our cores."""
    wall = after[0] - before[0]
    cores = ((after[1] - before[1]) - (after[2] - before[2])) / wall if wall > 0 else 0.0
    return dict(cores=round(cores, 3), share=round(cores / len(os.sched_getaffinity(0)), 4), seconds=round(wall, 1))


# ---------------------------------------------------------------------------------------------------- tessera
def run_tessera(args, model, mode, batch, size, threads, precision="fp32"):
    """One `tessera bench --json` process: its JSON object, checked against the schema and the request."""
    cmd = [args.tessera, "bench", mode, "--model", model, "--batch", str(batch), "--image-size", str(size),
           "--threads", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--precision", precision, "--json"]
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
    asked = dict(model=model, mode=mode, batch=batch, image_size=size, threads=threads, precision=precision)
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
    """The input and model of one (model, mode, batch, size) for one PyTorch contender, in that contender's
    worker process."""

    def __init__(self, spec):
        import torch
        self.mode, self.size, self.config = spec["mode"], spec["size"], spec["config"]
        self.parameters = spec["parameters"]  # tessera's count, when its JSON has one
        config = self.config
        self.num_labels = len(config["id2label"]) if config.get("id2label") else int(config["num_labels"])
        channels = int(config.get("num_channels", 3))
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(spec["batch"], channels, self.size, self.size, generator=g) * 2 - 1
        self.y = torch.arange(spec["batch"]) % self.num_labels

    def checked(self, model, what):
        """The model, if its parameter count is tessera's: a different count means a different architecture,
        and the row would compare unlike work."""
        n = sum(p.numel() for p in model.parameters())
        if self.parameters is not None and n != self.parameters:
            raise RuntimeError(f"{what} has {n:,} parameters, tessera's model {self.parameters:,}")
        return model

    def hf(self):
        model = self.checked(hf_model(self.config, self.size), "transformers' model")
        self.attention = getattr(model.config, "_attn_implementation", None)  # sdpa / eager: worth knowing
        return model.train() if self.mode == "train" else model.eval()

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

    def make_step(self, contender):
        """A callable running one step of `contender`. Raises with the reason when the contender cannot run
        on this row."""
        import torch
        if contender in ("torch-eager", "torch-bf16"):
            model = self.hf()
            return self.step_fn(lambda x: model(pixel_values=x).logits, model, self.optimizer(model),
                                contender == "torch-bf16")
        if contender == "torch-compile":
            model = self.hf()
            compiled = torch.compile(model)  # inductor, the default backend; compiles on the first call
            return self.step_fn(lambda x: compiled(pixel_values=x).logits, model, self.optimizer(model))
        if contender == "timm":
            return self.timm_step()
        raise ValueError(contender)

    def timm_step(self):
        import timm  # ImportError: skipped with the reason
        import torch
        torch.manual_seed(0)
        model = self.checked(timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=self.num_labels,
                                               img_size=self.size, in_chans=self.x.shape[1]), "timm's model")
        model = model.train() if self.mode == "train" else model.eval()
        return self.step_fn(model, model, self.optimizer(model))

    def export_onnx(self, folder):
        """transformers' model as an opset-17 ONNX file and the input as .npy in `folder`, for ONNX Runtime's
        worker: exported in a process of its own, so ONNX Runtime's peak does not hold PyTorch and the export."""
        import numpy as np
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
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its deprecation notice, every row
            # Fixed batch: no dynamic axes, as tessera's shapes are fixed too.
            torch.onnx.export(Logits(model), (self.x,), os.path.join(folder, "model.onnx"), opset_version=17,
                              input_names=["pixel_values"], output_names=["logits"], **kw)
        np.save(os.path.join(folder, "input.npy"), self.x.numpy())


def ort_step(spec):
    """ONNX Runtime's inference step on the exported model; imports neither torch nor transformers."""
    import numpy as np
    import onnxruntime as ort  # ImportError: skipped with the reason
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = spec["threads"], 1
    sess = ort.InferenceSession(os.path.join(spec["onnx_dir"], "model.onnx"), so, providers=["CPUExecutionProvider"])
    feed = {"pixel_values": np.load(os.path.join(spec["onnx_dir"], "input.npy"))}
    return lambda: sess.run(None, feed)


class Skip(Exception):
    """A contender that cannot run on this row, for a reason that is not its own failure."""


class NotApplicable(Skip):
    """A contender that has no such row (timm on CvT, ONNX Runtime training): left out of the table."""


def worker_main(conn, spec):
    """A contender's process for one row and thread count: builds the step and runs it once, answers
    ("ok", facts), then times a round per (steps, warmup) request until None. Errors are answered as
    (kind, reason) so the parent can tell "not applicable" and "not installed" from failures."""
    for var in THREAD_VARS:  # read when torch (OpenMP, MKL, inductor) is first imported: before that
        os.environ[var] = str(spec["threads"])
    try:
        c = spec["contender"]
        if c == "onnxruntime":
            fn, facts = ort_step(spec), {}
        else:
            import torch
            torch.set_num_threads(spec["threads"])
            row = Row(spec)
            if c == "onnx-export":
                row.export_onnx(spec["onnx_dir"])
                conn.send(("ok", {}))
                return
            fn = row.make_step(c)
            facts = {k: getattr(row, a) for k, a in (("torch_adamw", "adamw"), ("transformers_attention", "attention"))
                     if hasattr(row, a)}
        fn()
        conn.send(("ok", facts))
        while (request := conn.recv()) is not None:
            conn.send(("ok", time_steps(fn, *request)))
    except NotApplicable as e:
        conn.send(("n/a", str(e)))
    except ImportError as e:
        conn.send(("skipped", f"not installed: {e.name or short(e)}"))
    except Exception as e:  # noqa: BLE001 - reported by the parent, which goes on with the others
        conn.send(("error", short(e)))


class Worker:
    """The parent's handle on one contender's process. One long-lived process per contender, row and thread
    count rather than one per round: building (and torch.compile's compilation) happens once, as it did in
    one process, while the processes take turns, so the rounds still alternate. Only one of them runs at a
    time; the others wait on their pipe holding their model, which costs memory, not time."""

    def __init__(self, contender, spec):
        ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch state from the parent
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(theirs, dict(spec, contender=contender)), daemon=True)
        self.proc.start()
        theirs.close()
        self.facts = self.answer()
        self.pause()

    # Between its turns the process is stopped (SIGSTOP), not just waiting on its pipe: a framework's idle
    # worker threads may spin for a while after its last step (OpenMP's wait policy), taking cores from the
    # contender that runs next. (In the first run with live idle processes tessera's 2-thread steps were
    # 15-30 % slower than alone; that this was the cause is not yet shown, so the stop is a precaution.)
    def pause(self):
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGCONT)

    def answer(self):
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):  # it died (killed, out of memory) without answering
            self.proc.join()
            raise RuntimeError(f"its worker process exited with code {self.proc.exitcode}") from None
        if kind == "ok":
            return value
        self.proc.join()  # it exits after an error: reaped now, so its CPU time is counted as ours
        raise {"n/a": NotApplicable, "skipped": Skip}.get(kind, RuntimeError)(value)

    def round(self, steps, warmup):
        """Step times of one round and the process's peak resident set after them."""
        self.resume()
        try:
            self.conn.send((steps, warmup))
        except OSError:  # it has exited: answer() says with which code
            pass
        times = self.answer()
        self.pause()
        return times, peak_rss(self.proc.pid)

    def close(self):
        self.resume()
        try:
            self.conn.send(None)
        except OSError:  # it has exited already
            pass
        self.proc.join(60)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join()


# ---------------------------------------------------------------------------------------------------- one row
def not_applicable(c, spec):
    """Checked before starting a process for a contender that has no such row."""
    if c == "timm" and spec["config"].get("model_type") != "vit":
        raise NotApplicable("timm's vit_base_patch16_224 is compared on vit-b16 rows only")
    if c == "onnxruntime" and spec["mode"] != "infer":
        raise NotApplicable("ONNX Runtime runs inference rows only")


def start_worker(c, spec):
    """The contender's worker, built and past its first step. ONNX Runtime's model is exported by a
    transformers process first, which exits before ONNX Runtime's starts."""
    if c == "onnxruntime":
        Worker("onnx-export", spec).close()
    return Worker(c, spec)


def measure_row(args, model, mode, batch, size, threads):
    """Rounds of every contender on one row at one thread count; returns the row's record with per-round
    stats and summaries."""
    rec = dict(model=model, mode=mode, batch=batch, image_size=size, threads=threads, contenders={})
    res = {c: dict(status="ok", rounds=[]) for c in args.contenders}
    workers = {}
    with tempfile.TemporaryDirectory() as onnx_dir:
        try:
            for r in range(args.rounds):
                for c in args.contenders:
                    measure_round(args, rec, res[c], c, workers, onnx_dir)
                    cr = res[c]
                    print(f"  round {r + 1}/{args.rounds} {c}: " + (
                        f"{cr['rounds'][-1]['median'] * 1e3:.1f} ms" if cr["status"] == "ok" else
                        f"{cr['status']} ({cr['reason']})"), flush=True)
        finally:
            for w in workers.values():
                w.close()
    flops = rec.get("tessera", {}).get("flops_per_step")
    for c, cr in res.items():
        if cr["status"] == "ok" and cr["rounds"]:
            meds = [x["median"] for x in cr["rounds"]]
            m = statistics.median(meds)
            cr.update(step_seconds=m, round_medians_min=min(meds), round_medians_max=max(meds),
                      images_per_second=batch / m, gflops_per_second=flops / m / 1e9 if flops else None,
                      peak_memory_bytes=max(x["peak_memory_bytes"] for x in cr["rounds"]))
        rec["contenders"][c] = cr
    tess, tess16 = res.get("tessera", {}), res.get("tessera-bf16", {})
    for c, cr in res.items():
        if tess.get("step_seconds") and cr.get("step_seconds"):
            cr["tessera_speedup"] = cr["step_seconds"] / tess["step_seconds"]  # > 1: tessera faster
        if tess16.get("step_seconds") and cr.get("step_seconds"):
            cr["tessera_bf16_speedup"] = cr["step_seconds"] / tess16["step_seconds"]  # > 1: tessera's bf16 faster
        if tess.get("peak_memory_bytes") and cr.get("peak_memory_bytes"):
            cr["tessera_memory_ratio"] = tess["peak_memory_bytes"] / cr["peak_memory_bytes"]  # < 1: tessera smaller
    for w in workers.values():
        for k, v in w.facts.items():
            rec[k] = v
    return rec


def measure_round(args, rec, cr, c, workers, onnx_dir):
    """One round of contender `c` into its result `cr`; a failure sets its status and reason instead."""
    if cr["status"] != "ok":
        return
    model, mode, batch, size, threads = (rec[k] for k in ("model", "mode", "batch", "image_size", "threads"))
    try:
        if c in ("tessera", "tessera-bf16"):
            out = run_tessera(args, model, mode, batch, size, threads, "bf16" if c == "tessera-bf16" else "fp32")
            raw = {k: v for k, v in out.items() if k != "config"}  # the config once per row is enough
            stats = {k: out["step_seconds_" + k] for k in ("median", "min", "p25", "p75", "max")}
            cr["rounds"].append(dict(stats, peak_memory_bytes=out["peak_memory_bytes"], json=raw))
            if c == "tessera":
                rec.setdefault("tessera", raw)  # flops and parameters: the same every round
                rec["config"] = out["config"]
            return
        if "config" not in rec:
            raise Skip("needs tessera's config, and `tessera bench` did not run (see its row)")
        if c not in workers:
            spec = dict(mode=mode, batch=batch, size=size, threads=threads, config=rec["config"],
                        parameters=rec["tessera"].get("parameters"), onnx_dir=onnx_dir)
            not_applicable(c, spec)
            t0 = time.perf_counter()
            try:
                workers[c] = start_worker(c, spec)
            finally:
                cr["first_step_seconds"] = time.perf_counter() - t0
        times, peak = workers[c].round(args.steps, args.warmup)
        cr["rounds"].append(dict(spread(times), step_seconds=times, peak_memory_bytes=peak))
    except Skip as e:
        cr.update(status="n/a" if isinstance(e, NotApplicable) else "skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - one contender failing must not lose the others
        cr.update(status="error", reason=short(e))


def thread_scaling(recs):
    """Each contender's step time at the smallest thread count over its time at each record's count, for the
    records of one row (same model, mode, batch, size)."""
    base = min(recs, key=lambda rec: rec["threads"])
    for rec in recs:
        for c, cr in rec["contenders"].items():
            t0 = base["contenders"].get(c, {}).get("step_seconds")
            if t0 and cr.get("step_seconds"):
                cr["thread_scaling"] = t0 / cr["step_seconds"]


# ---------------------------------------------------------------------------------------------------- output
def print_table(rows):
    low = min(rec["threads"] for rec in rows)
    head = ["model", "mode", "batch", "size", "threads", "contender", "ms/step", "round spread ms", "images/s",
            "GFLOP/s", "tessera/x", "tessera-bf16/x", f"{low}→N scaling", "peak MiB", "peak tessera/x", "first step s"]
    body, notes = [], []
    fmt = lambda v, spec: format(v, spec) if v else ""
    for rec in rows:
        for c, cr in rec["contenders"].items():
            if cr["status"] == "n/a":
                continue
            key = [rec["model"], rec["mode"], str(rec["batch"]), str(rec["image_size"]), str(rec["threads"]), c]
            first = fmt(cr.get("first_step_seconds"), ".1f")
            if cr["status"] != "ok":
                body.append(key + [cr["status"]] + [""] * 8 + [first])
                notes.append(f"{' '.join(key)}: {cr['status']}: {cr['reason']}")
                continue
            body.append(key + [f"{cr['step_seconds'] * 1e3:.1f}",
                               f"{cr['round_medians_min'] * 1e3:.1f}-{cr['round_medians_max'] * 1e3:.1f}",
                               f"{cr['images_per_second']:.1f}", fmt(cr.get("gflops_per_second"), ".1f"),
                               fmt(cr.get("tessera_speedup"), ".2f"), fmt(cr.get("tessera_bf16_speedup"), ".2f"),
                               fmt(cr.get("thread_scaling"), ".2f"),
                               f"{cr['peak_memory_bytes'] / 2 ** 20:.0f}", fmt(cr.get("tessera_memory_ratio"), ".2f"),
                               first])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    line = lambda r: "  ".join(v.rjust(w) if i >= 6 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    print("\n" + line(head) + "\n" + line(["-" * w for w in widths]))
    for r in body:
        print(line(r))
    print("\n".join([
        "\nms/step: median over rounds of each round's median step; round spread: the lowest and highest round median;",
        "tessera/x: the contender's ms / tessera's (> 1: tessera faster); tessera-bf16/x: the same against",
        "  tessera's bf16 step (--precision bf16; read it on the torch-bf16 row); GFLOP/s: tessera's flops_per_step / ms/step;",
        f"{low}→N scaling: the contender's ms at {low} thread(s) / its ms at this row's thread count;",
        "peak MiB: the high-water mark of the contender's process's resident set (VmHWM), tessera's as well: it",
        "  includes the model, its optimizer state, the first step and the framework itself (interpreter, libraries,",
        "  torch.compile's compilation; ONNX Runtime's excludes the PyTorch export, made in another process);",
        "peak tessera/x: tessera's peak / the contender's (< 1: tessera smaller);",
        "first step s: starting the process, building, the first step and torch.compile's compilation or the ONNX",
        "  export, never timed with the steps"]))
    for n in notes:
        print("  " + n)


COLORS = ["#000000", "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]  # tessera black, its bf16 grey


def write_svg(rows, path):
    """Images/s against batch, one panel per (model, mode, thread count), one line per contender. Batches are evenly
    spaced (they are usually powers of two, where a log axis would look the same) and y starts at 0."""
    panels = {}
    for rec in rows:
        for c, cr in rec["contenders"].items():
            if cr.get("images_per_second"):
                key = (rec["model"], rec["mode"], rec["image_size"], rec["threads"])
                panels.setdefault(key, {}).setdefault(c, []).append((rec["batch"], cr["images_per_second"]))
    W, H, ml, mr, mt, mb = 420, 300, 60, 20, 30, 90
    cols = 2
    nrows = max(1, (len(panels) + cols - 1) // cols)
    esc = lambda s: str(s).replace("&", "&amp;").replace("<", "&lt;")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * nrows}" '
           f'font-family="sans-serif" font-size="11">', '<rect width="100%" height="100%" fill="white"/>']
    for i, ((model, mode, size, threads), lines) in enumerate(panels.items()):  # in the order measured
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
                   f'{esc(model)} {esc(mode)}, {size} px, {threads} thread{"s" if threads > 1 else ""}: '
                   'images/s vs batch</text>')
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
    """What the numbers were measured on and with: CPU, package versions, the commit."""
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
                cpu_count=os.cpu_count(), cpus_usable=len(os.sched_getaffinity(0)), threads=args.threads,
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
    ap.add_argument("--threads", type=csv, default=["2"],
                    help="thread counts, each row measured at every one (default 2; e.g. 1,2)")
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
    try:
        args.threads = sorted({int(t) for t in args.threads})
    except ValueError:
        bad.append(f"--threads: not a list of integers: {','.join(args.threads)}")
        args.threads = []
    args.sizes = dict(DEFAULT_SIZE)
    for item in csv(args.image_size):
        name, _, val = item.rpartition("=")
        if name and name not in DEFAULT_SIZE:
            bad.append(f"--image-size: unknown model '{name}' in '{item}'")
        elif not val.isdigit() or int(val) <= 0:
            bad.append(f"--image-size: '{item}' is not a positive size (S or MODEL=S)")
        else:
            args.sizes.update({name: int(val)} if name else {m: int(val) for m in DEFAULT_SIZE})
    for name, v, low in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0), ("--rounds", args.rounds, 2)):
        if v < low:
            bad.append(f"{name}: must be >= {low}, got {v}")
    bad += [f"--batches: batch must be >= 1, got {b}" for b in args.batches if b < 1]
    bad += [f"--threads: thread count must be >= 1, got {t}" for t in args.threads if t < 1]
    if {"tessera", "tessera-bf16"} & set(args.contenders) and not os.access(args.tessera, os.X_OK):
        bad.append(f"--tessera: {args.tessera} is not an executable (build it with `ninja -C build-cpu tessera`)")
    if bad:
        ap.error("; ".join(bad))
    return args


def main():
    args = parse_args()
    if importlib.util.find_spec("torch") is None:
        for c in [c for c in args.contenders if not c.startswith("tessera")]:
            print(f"{c}: skipped: torch is not installed")
        args.contenders = [c for c in args.contenders if c.startswith("tessera")]
    meta = machine_info(args)
    print(f"# {meta['cpu_model']}, threads {','.join(map(str, args.threads))}, torch {meta['versions']['torch']}, "
          f"transformers {meta['versions']['transformers']}, commit {meta['commit']}, {meta['date']}", flush=True)
    rows, busy = [], []
    for model in args.models:
        for mode in args.modes:
            for batch in args.batches:
                size, same = args.sizes[model], []
                for threads in args.threads:
                    print(f"{model} {mode} batch {batch} {size} px {threads} threads", flush=True)
                    # Others' CPU use while the row ran: the load average would also count what ran before.
                    before = cpu_sample()
                    rec = measure_row(args, model, mode, batch, size, threads)
                    rec["others_cpu"] = others_cpu(before, cpu_sample())
                    if rec["others_cpu"]["cores"] > BUSY_CORES:
                        busy.append(f"{model} {mode} batch {batch} {threads} threads")
                        print(f"  other processes used {rec['others_cpu']['cores']:.2f} cores during this row",
                              flush=True)
                    rows.append(rec)
                    same.append(rec)
                    thread_scaling(same)
                    # Rewritten after every row: a run cut short still leaves what it measured.
                    for path in (args.json_out, args.svg):
                        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                    with open(args.json_out, "w") as fh:
                        json.dump(dict(meta, rows=rows), fh, indent=1)
                    write_svg(rows, args.svg)
    print_table(rows)
    if busy:
        print(f"\nother processes used more than {BUSY_CORES:g} of a core during {len(busy)} row(s) "
              f"({'; '.join(busy)}): PyTorch's threads wait on each other when a core is taken, so those ratios "
              "are not a measurement")
    print(f"\nwrote {args.json_out} and {args.svg}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
