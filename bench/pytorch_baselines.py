#!/usr/bin/env python3
"""PyTorch baselines for tessera's GPU benchmarks, on the same shapes (measuring rules: bench/README.md).

Tools only: nothing in tessera's build or tests needs Python. Run it on the GPU machine in the same device
call as tessera's Google Benchmark programs so bench/RESULTS.md can put both side by side:

    python3 bench/pytorch_baselines.py [--quick] [--sections attention,layernorm,conv,adamw,step] [--out PATH]

Sections:
  attention  F.scaled_dot_product_attention per backend (flash / efficient / cudnn / math), bf16, batch 64
  layernorm  F.layer_norm fwd, bwd, fwd+bwd, bf16 and fp32, GB/s against a device-to-device copy measured here
  conv       CvT / ViT conv token embedding (conv2d -> tokens -> LayerNorm) and depthwise 3x3 conv + BatchNorm2d
  adamw      torch.optim.AdamW fused / foreach on the parameters of CvT-13 (and ViT-B/16)
  step       one training step of HF CvT-13, HF ViT-B/16, timm ViT-B/16: eager fp32, eager bf16, compiled bf16

Kernel timings: CUDA events around one call, median of N repetitions, warm-up excluded, L2 flushed before
each repetition by writing a 256 MB buffer (the H100's L2 is 50 MB), random inputs. Training steps are timed
the same way without the flush (a step moves far more than L2). Results print as markdown tables and go to
a JSON file (--out; default $OUT/pytorch_baselines.json, else ./pytorch_baselines.json), rewritten after
every section so that a run cut short still leaves what it measured.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings

PEAK_BF16 = 989e12  # H100 SXM datasheet (H200: the same), bf16 dense: the MFU denominator for every mode
ATTN_SHAPES = [  # name, heads, Tq, Tk, head dim (batch 64)
    ("CvT stage 1", 1, 3136, 784, 64), ("CvT stage 2", 3, 784, 196, 64),
    ("CvT stage 3", 6, 197, 50, 64), ("ViT-B/16", 12, 197, 197, 64)]
LN_SHAPES = [(3136, 64), (784, 192), (197, 384), (197, 768)]  # tokens per image, channels (rows = batch·tokens)
EMBED_CONVS = [  # name, Cin, Cout, kernel, stride, padding, input side
    ("CvT stage 1 7x7/4", 3, 64, 7, 4, 2, 224), ("CvT stage 2 3x3/2", 64, 192, 3, 2, 1, 56),
    ("CvT stage 3 3x3/2", 192, 384, 3, 2, 1, 28), ("ViT 16x16/16", 3, 768, 16, 16, 0, 224)]
DW_CONVS = [(64, 56, 1), (64, 56, 2), (384, 14, 1), (384, 14, 2)]  # channels, side, stride (3x3, pad 1)
TRAIN_GFLOP = {"HF CvT-13": 27.0, "HF ViT-B/16": 105.0, "timm ViT-B/16": 105.0}  # per image: ≈ 3× the forward


class Ctx:
    """What every section needs: torch, the device, repetition counts, the L2-flush buffer, the results."""

    def __init__(self, torch, args):
        self.torch, self.args = torch, args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.reps = 1 if not self.cuda else (5 if args.quick else 30)
        self.warmup = 1 if not self.cuda else 3
        self.batch = 64 if self.cuda else 2  # --device cpu is a bookkeeping check, not a measurement
        self.flush_buf = torch.empty(256 << 20, dtype=torch.uint8, device=self.dev) if self.cuda else None
        self.records = []

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def time_ms(self, fn, flush=True, reps=None, warmup=None):
        """Median milliseconds of fn() over reps calls, after warm-up; L2 flushed before each (outside the events)."""
        torch = self.torch
        for _ in range(self.warmup if warmup is None else warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps or self.reps):
            if not self.cuda:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
                continue
            if flush:
                self.flush_buf.zero_()
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return statistics.median(times)

    def rand(self, *shape, dtype=None, grad=False, scale=1.0):
        t = self.torch.randn(*shape, device=self.dev, dtype=dtype or self.torch.float32) * scale
        return t.requires_grad_(grad)

    def record(self, section, **kw):
        kw["section"] = section
        self.records.append(kw)
        return kw

    def free(self):
        if self.cuda:
            self.torch.cuda.empty_cache()


def short(e):
    """One line of an exception, for a table cell."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0][:160] if msg else ''}"


def table(title, headers, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def f(x, nd=2):
    return "n/a" if x is None else f"{x:,.{nd}f}"


# ---------------------------------------------------------------------------------------------------- attention
def attention(c):
    torch = c.torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]
    rows = []
    for name, H, Tq, Tk, D in ATTN_SHAPES:
        B = c.batch
        fwd_flops = 4.0 * B * H * Tq * Tk * D
        q, dout = c.rand(B, H, Tq, D, dtype=torch.bfloat16), c.rand(B, H, Tq, D, dtype=torch.bfloat16)
        k, v = c.rand(B, H, Tk, D, dtype=torch.bfloat16), c.rand(B, H, Tk, D, dtype=torch.bfloat16)
        qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
        best = {}
        for mode, flops in (("fwd", fwd_flops), ("fwd+bwd", 3.5 * fwd_flops)):  # bwd = 2.5x fwd (FA convention)
            for bname, backend in backends:
                if mode == "fwd":
                    def fn():
                        with torch.no_grad():
                            F.scaled_dot_product_attention(q, k, v)
                else:
                    def fn():  # autograd.grad: no accumulation into .grad, so every call does the same work
                        out = F.scaled_dot_product_attention(qg, kg, vg)
                        torch.autograd.grad(out, (qg, kg, vg), dout)
                rec = dict(shape=name, batch=B, heads=H, Tq=Tq, Tk=Tk, D=D, dtype="bf16", mode=mode, backend=bname)
                # A backend that refuses a shape raises "No available kernel" after warning why: keep the why.
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    try:
                        with sdpa_kernel([backend]):
                            ms = c.time_ms(fn)
                        rec.update(status="ok", ms=ms, tflops=flops / ms / 1e9)
                    except Exception as e:  # noqa: BLE001 - any refusal is a result, not a crash
                        # CUDA warns "<kernel> not used because:" and then one warning per failed check.
                        why = [m for m in dict.fromkeys(str(w.message).strip() for w in caught)
                               if m and not m.endswith("because:")]
                        rec.update(status="n/a", reason="; ".join(why + [short(e)])[:600])
                c.record("attention", **rec)
                if rec["status"] == "ok" and (mode not in best or rec["ms"] < best[mode][1]):
                    best[mode] = (bname, rec["ms"])
                rows.append([name, mode, bname, f(rec.get("ms"), 3), f(rec.get("tflops"), 1),
                             "" if rec["status"] == "ok" else rec["reason"][:120]])
                c.free()
        for mode, (bname, ms) in best.items():
            c.record("attention", shape=name, mode=mode, best_backend=bname, ms=ms)
            rows.append([f"**{name}**", mode, f"**best: {bname}**", f(ms, 3), "", ""])
        del q, k, v, qg, kg, vg, dout
    table(f"SDPA, batch {c.batch}, bf16, head dim 64 (FLOPs fwd 4·B·H·Tq·Tk·D, bwd 2.5× fwd)",
          ["shape", "mode", "backend", "ms", "TFLOP/s", "n/a reason"], rows)


# ---------------------------------------------------------------------------------------------------- layer norm
def copy_bandwidth(c):
    """Device-to-device copy of a 512 MB tensor; GB/s counts read + write."""
    torch = c.torch
    n = (512 << 20) if c.cuda else (16 << 20)
    src, dst = torch.rand(n // 4, device=c.dev), torch.empty(n // 4, device=c.dev)
    ms = c.time_ms(lambda: dst.copy_(src), flush=False)
    gbps = 2 * n / ms / 1e6
    c.record("layernorm", name="copy", bytes=2 * n, ms=ms, gbps=gbps)
    return gbps


def layer_norm(c):
    torch = c.torch
    import torch.nn.functional as F
    copy_gbps = copy_bandwidth(c)
    rows_out = []
    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        s = 2 if dtype == torch.bfloat16 else 4
        for tokens, C in LN_SHAPES:
            rows = c.batch * tokens
            n = rows * C
            # Bytes, the minimum each pass must move (as bench/bench_layer_norm.cu counts them):
            #   forward  2·n·s + 8·rows          x read, y written, fp32 mean/rstd written for the backward
            #   backward 3·n·s + 8·rows + 3·C·s  dy and x read, dx written, mean/rstd read, w read, dw/db written
            #   fwd+bwd  the sum
            fwd_b = 2 * n * s + 8 * rows
            bwd_b = 3 * n * s + 8 * rows + 3 * C * s
            x, dy = c.rand(rows, C, dtype=dtype, grad=True, scale=2.0), c.rand(rows, C, dtype=dtype)
            w, b = c.rand(C, dtype=dtype, grad=True), c.rand(C, dtype=dtype, grad=True)
            y = F.layer_norm(x, (C,), w, b)  # graph kept for the backward-only timing

            def fwd():
                with torch.no_grad():
                    F.layer_norm(x, (C,), w, b)

            def bwd():
                torch.autograd.grad(y, (x, w, b), dy, retain_graph=True)

            def fwdbwd():
                torch.autograd.grad(F.layer_norm(x, (C,), w, b), (x, w, b), dy)

            for mode, fn, nbytes in (("fwd", fwd, fwd_b), ("bwd", bwd, bwd_b), ("fwd+bwd", fwdbwd, fwd_b + bwd_b)):
                try:
                    ms = c.time_ms(fn)
                    gbps = nbytes / ms / 1e6
                    rec = c.record("layernorm", rows=rows, C=C, dtype=dname, mode=mode, bytes=nbytes, ms=ms,
                                   gbps=gbps, of_copy=gbps / copy_gbps, status="ok")
                except Exception as e:  # noqa: BLE001
                    rec = c.record("layernorm", rows=rows, C=C, dtype=dname, mode=mode, status="error", reason=short(e))
                rows_out.append([f"{rows}×{C}", dname, mode, f(rec.get("ms"), 4), f(rec.get("gbps"), 0),
                                 f(100 * rec["of_copy"], 0) + "%" if "of_copy" in rec else rec.get("reason")])
            del x, dy, w, b, y
            c.free()
    table(f"F.layer_norm, GB/s against the device-to-device copy measured here ({copy_gbps:,.0f} GB/s)",
          ["rows × C", "dtype", "mode", "ms", "GB/s", "of copy"], rows_out)


# ---------------------------------------------------------------------------------------------------- conv
def conv(c):
    torch = c.torch
    import torch.nn as nn
    B, bf = c.batch, torch.bfloat16
    out = []
    for name, cin, cout, k, st, pad, side in EMBED_CONVS:
        ho = (side + 2 * pad - k) // st + 1
        flops = 2.0 * B * cout * ho * ho * cin * k * k
        # Backward: weight gradient always (same FLOPs as the forward); data gradient only where the input is an
        # activation (stages 2 and 3), not for the images of stage 1 / ViT.
        needs_dx = cin != 3
        for fmt in ("default", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            cv = nn.Conv2d(cin, cout, k, st, pad).to(c.dev, bf).to(memory_format=mf)
            ln = nn.LayerNorm(cout, eps=1e-5).to(c.dev, bf)
            x = c.rand(B, cin, side, side, dtype=bf, grad=needs_dx).contiguous(memory_format=mf)
            params = list(cv.parameters()) + list(ln.parameters()) + ([x] if needs_dx else [])
            dtok = c.rand(B, ho * ho, cout, dtype=bf)

            def embed():  # HF CvtEmbeddings: conv, (B,C,H,W) -> (B,H·W,C) tokens, LayerNorm over C
                return ln(cv(x).flatten(2).transpose(1, 2))

            def fwd():
                with torch.no_grad():
                    embed()

            def fwdbwd():
                torch.autograd.grad(embed(), params, dtok)

            for mode, fn, fl in (("fwd", fwd, flops), ("fwd+bwd", fwdbwd, flops * (3 if needs_dx else 2))):
                try:
                    ms = c.time_ms(fn)
                    c.record("conv", kind="embedding", name=name, batch=B, layout=fmt, mode=mode, flops=fl, ms=ms,
                             tflops=fl / ms / 1e9, status="ok")
                    out.append([name + " + LN", fmt, mode, f(ms, 3), f(fl / ms / 1e9, 1)])
                except Exception as e:  # noqa: BLE001
                    c.record("conv", kind="embedding", name=name, layout=fmt, mode=mode, status="error",
                             reason=short(e))
                    out.append([name + " + LN", fmt, mode, "error", short(e)])
            del cv, ln, x, dtok, params
            c.free()
    for C, side, st in DW_CONVS:
        ho = (side + 2 - 3) // st + 1
        flops = 2.0 * B * C * ho * ho * 9
        name = f"dw3x3/{st} C={C} {side}²"
        for fmt in ("default", "channels_last"):
            mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
            # As under autocast: bf16 conv, BatchNorm (train mode, batch statistics) with fp32 parameters.
            cv = nn.Conv2d(C, C, 3, st, 1, groups=C, bias=False).to(c.dev, bf).to(memory_format=mf)
            bn = nn.BatchNorm2d(C, eps=1e-5).to(c.dev).train()
            x = c.rand(B, C, side, side, dtype=bf, grad=True).contiguous(memory_format=mf)
            params = [x, cv.weight, bn.weight, bn.bias]
            dy = c.rand(B, C, ho, ho, dtype=bf).contiguous(memory_format=mf)

            def fwd():
                with torch.no_grad():
                    bn(cv(x))

            def fwdbwd():
                torch.autograd.grad(bn(cv(x)), params, dy)

            for mode, fn, fl in (("fwd", fwd, flops), ("fwd+bwd", fwdbwd, 3 * flops)):
                try:
                    ms = c.time_ms(fn)
                    c.record("conv", kind="depthwise+bn", name=name, batch=B, layout=fmt, mode=mode, flops=fl,
                             ms=ms, tflops=fl / ms / 1e9, status="ok")
                    out.append([name + " + BN", fmt, mode, f(ms, 3), f(fl / ms / 1e9, 2)])
                except Exception as e:  # noqa: BLE001
                    c.record("conv", kind="depthwise+bn", name=name, layout=fmt, mode=mode, status="error",
                             reason=short(e))
                    out.append([name + " + BN", fmt, mode, "error", short(e)])
            del cv, bn, x, dy, params
            c.free()
    table(f"Conv token embedding and depthwise conv + BatchNorm2d, batch {B}, bf16 "
          "(FLOPs 2·N·Cout·Ho·Wo·Cin/groups·kh·kw; fwd+bwd 3× fwd, 2× where the input is the image)",
          ["op", "layout", "mode", "ms", "TFLOP/s"], out)


# ---------------------------------------------------------------------------------------------------- AdamW
def adamw(c):
    torch = c.torch
    from transformers import CvtConfig, CvtForImageClassification, ViTConfig, ViTForImageClassification
    out = []
    for mname, build in (("CvT-13", lambda: CvtForImageClassification(CvtConfig(num_labels=4))),
                         ("ViT-B/16", lambda: ViTForImageClassification(ViTConfig(num_labels=4)))):
        shapes = [p.shape for p in build().parameters()]
        n = sum(s.numel() for s in shapes)
        # fp32 per element: param, grad, exp_avg, exp_avg_sq read (16 B); param, exp_avg, exp_avg_sq written (12 B)
        nbytes = 28 * n
        for impl in ("fused", "foreach"):
            params = [c.rand(*s, grad=True, scale=0.02) for s in shapes]
            for p in params:
                p.grad = c.rand(*p.shape, scale=1e-3)
            try:
                opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=0.05, **{impl: True})
                ms = c.time_ms(opt.step)
                rec = c.record("adamw", model=mname, impl=impl, tensors=len(shapes), params=n, bytes=nbytes, ms=ms,
                               gbps=nbytes / ms / 1e6, status="ok")
                out.append([mname, impl, len(shapes), f"{n:,}", f(ms, 3), f(rec["gbps"], 0)])
            except Exception as e:  # noqa: BLE001 - e.g. fused on a device without it
                c.record("adamw", model=mname, impl=impl, status="error", reason=short(e))
                out.append([mname, impl, len(shapes), f"{n:,}", "error", short(e)])
            del params
            c.free()
    table("torch.optim.AdamW step (fp32 params; bytes 28 per parameter)",
          ["model", "impl", "tensors", "parameters", "ms/step", "GB/s"], out)


# ---------------------------------------------------------------------------------------------------- training step
def train_step(c):
    torch = c.torch
    import torch.nn.functional as F
    from transformers import CvtConfig, CvtForImageClassification, ViTConfig, ViTForImageClassification
    B = min(8, c.batch) if c.args.quick else c.batch
    steps = 1 if not c.cuda else (5 if c.args.quick else 20)
    models = [("HF CvT-13", lambda: CvtForImageClassification(CvtConfig(num_labels=4)), True),
              ("HF ViT-B/16", lambda: ViTForImageClassification(ViTConfig(num_labels=4)), True)]
    try:
        import timm
        models.append(("timm ViT-B/16", lambda: timm.create_model("vit_base_patch16_224", pretrained=False,
                                                                  num_classes=4), False))
    except Exception as e:  # noqa: BLE001
        c.record("step", model="timm ViT-B/16", status="error", reason=short(e))
    out = []
    for mname, build, is_hf in models:
        for mode in ("eager fp32", "eager bf16", "compile bf16"):
            rec = dict(model=mname, mode=mode, batch=B, steps=steps)
            if mode.startswith("compile") and not c.cuda:
                out.append([mname, mode, B, "skipped on cpu", "", "", ""])
                continue
            torch.manual_seed(0)
            model = build().to(c.dev).train()
            if is_hf:
                rec["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05, fused=c.cuda)
            fwd_model = torch.compile(model) if mode.startswith("compile") else model
            x = c.rand(B, 3, 224, 224)
            y = torch.randint(0, 4, (B,), device=c.dev)
            amp = mode.endswith("bf16")

            def step():
                with torch.autocast(c.dev.type, dtype=torch.bfloat16, enabled=amp):
                    logits = fwd_model(pixel_values=x).logits if is_hf else fwd_model(x)
                    loss = F.cross_entropy(logits.float(), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            try:
                t0 = time.perf_counter()
                step()  # the first step compiles / builds optimizer state; timed separately
                c.sync()
                rec["first_step_s"] = time.perf_counter() - t0
                ms = c.time_ms(step, flush=False, reps=steps, warmup=2 if c.cuda else 0)
                ips = B / ms * 1e3
                mfu = TRAIN_GFLOP[mname] * 1e9 * ips / PEAK_BF16
                rec.update(status="ok", ms=ms, images_per_s=ips, mfu=mfu, peak_flops=PEAK_BF16,
                           train_gflop_per_image=TRAIN_GFLOP[mname])
                if c.cuda:
                    rec["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
                out.append([mname, mode, B, f(ms, 1), f(ips, 0), f(100 * mfu, 1) + "%", f(rec["first_step_s"], 1)])
            except Exception as e:  # noqa: BLE001 - a compile failure is a result
                rec.update(status="error", reason=short(e))
                out.append([mname, mode, B, "error", short(e), "", ""])
            c.record("step", **rec)
            del model, opt, fwd_model, x, y
            if mode.startswith("compile"):
                torch._dynamo.reset()
            c.free()
            if c.cuda:
                torch.cuda.reset_peak_memory_stats()
    table(f"Training step (forward + cross-entropy + backward + AdamW fused + zero_grad), 224², batch {B}; "
          f"MFU = training FLOPs/image (CvT-13 27 G, ViT-B/16 105 G) × img/s / {PEAK_BF16 / 1e12:.0f} TFLOP/s "
          "(H100 SXM bf16 dense, also for fp32)",
          ["model", "mode", "batch", "ms/step", "images/s", "MFU", "first step s"], out)


def git_commit():
    """The repository's HEAD (read only), so a JSON file names what it was measured next to."""
    try:
        import subprocess
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


SECTIONS = {"attention": attention, "layernorm": layer_norm, "conv": conv, "adamw": adamw, "step": train_step}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 repetitions; training step at batch 8 (smoke run)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/pytorch_baselines.json or ./...)")
    ap.add_argument("--device", default="cuda", help="'cpu' runs the bookkeeping at batch 2 (debug, no numbers)")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s): {', '.join(unknown)}")
    try:
        import torch
    except ImportError:
        print("no CUDA device: nothing to measure (torch is not installed)")
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    out_path = args.out or os.path.join(os.environ.get("OUT") or ".", "pytorch_baselines.json")
    c = Ctx(torch, args)
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=torch.cuda.get_device_name() if c.cuda else platform.processor() or "cpu",
        torch=torch.__version__, cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        python=platform.python_version(), argv=sys.argv[1:], quick=args.quick, reps=c.reps,
        peak_bf16_flops=PEAK_BF16, tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32, commit=git_commit())
    if c.cuda:
        props = torch.cuda.get_device_properties(c.dev)
        meta.update(sm_count=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    print(f"# PyTorch baselines — {meta['device']}, torch {meta['torch']}, CUDA {meta['cuda']}, "
          f"cuDNN {meta['cudnn']}, {meta['date']}, median of {c.reps}")
    for name in sections:
        t0 = time.perf_counter()
        try:
            SECTIONS[name](c)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            c.record(name, status="error", reason=short(e))
            print(f"\n### {name}: failed: {short(e)}")
        meta.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"\n({name}: {meta['section_seconds'][name]} s)", flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as fh:
            json.dump(dict(meta, records=c.records), fh, indent=1)
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
