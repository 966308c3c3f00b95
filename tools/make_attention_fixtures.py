#!/usr/bin/env python3
"""Attention fixtures for tessera's attention maps (models/attention_maps.h), computed by Hugging Face
transformers (tools only, never needed to build or test: the fixtures are checked in).

    python3 tools/make_attention_fixtures.py    # writes tests/fixtures/attention/{vit,cvt}.safetensors

Tiny random-init ViT and CvT (every structural feature kept: ViT's cls token over a 4x4 patch grid (16 px, patch 4); CvT's
three stages, stride-2 key/value convolutions and the last stage's cls token, on a non-square 40x56 input so
that rows and columns cannot be swapped unnoticed). As in make_model_fixtures.py the weights are moved off
their init (noise of scale 0.1 on every parameter, 0.2 (ViT) or 0.5 (CvT) more on the query and key
projections, so that the attention is far from uniform without saturating) and BatchNorm gets non-trivial running statistics.

The models run in float64 on the float32 weights, so the probabilities are the exact-arithmetic reference
for those weights up to float64 rounding; they are stored as float32. One file per architecture holds:
  <checkpoint names>                 the weights (float32), as model.safetensors
  fixture.pixel_values               (2, 3, H, W) float32 input batch
  fixture.probs.<layer>              (2, heads, Tq, Tk) attention probabilities of every layer, eval mode:
                                     ViT from the eager attention's output_attentions; CvT from a forward
                                     hook on each CvtSelfAttention's dropout, whose input is the softmax
                                     output (transformers returns none for CvT)
  fixture.rollout.<fuse>_<discard>   (2, rows, cols) float64 rollout map computed here in numpy from the
                                     stored float32 probabilities, for the settings in SETTINGS
  fixture.cls_mass.<fuse>_<discard>  (rolled-out layers, 2) mean over query rows of the fused cls column
  fixture.target_class               (2,) int64: the class whose logit the gradient methods explain, per
                                     image (image 0 its predicted class, image 1 another)
  fixture.grads.<layer>              (2, heads, Tq, Tk) d(sum over images of logit[b, target_class[b]]) / d(probs)
  fixture.grad_rollout.<discard>     (2, rows, cols) float64 gradient-weighted rollout (vit-explain) from the
                                     stored float32 probabilities and gradients, for DISCARDS
  fixture.relevance                  (2, rows, cols) float64 relevance (Chefer et al. 2021) from the same
  fixture.to_pixels.<method>         (2, H, W) float64: the map carried through every stage down to the pixels
                                     (models/attention_maps.h attention_map_to_pixels), for rollout (mean),
                                     grad_rollout and relevance, computed here with dense matrices
  fixture.to_pixels.<method>.stage<s>  (2, rows, cols) the same row on stage s's token grid, max 1
  fixture.to_pixels.<method>.cls_dropped  (2,) the cls entry's share of the row when leaving the last stage
  fixture.labels                     (2,) int64 labels for the head importance
  fixture.importance.<layer>         (heads,) Michel et al.'s head importance of every layer: the mean over
                                     images of |<ctx_h, dL/dctx_h>| = |<P_h, dL/dP_h>| (ctx_h = P_h V_h, so the
                                     two inner products are equal), L the summed cross-entropy of `labels`,
                                     normalised to unit L2 norm per layer
Metadata: "config" (config.json text), "rollout_layers" and "settings" (JSON).

The numpy rollout is written independently of tessera's: full T x T products, R = Â_L ... Â_1 with
Â = (A + I) / 2 normalised by rows, A = fused heads (CvT: times the transport S built below from the
config), the lowest ⌊discard·T²⌋ entries of each A zeroed except A[0, 0] (vit-explain's rule, per image,
ties to the lower flat index), map = R[0, 1:] / max. Grad rollout replaces the fused heads by
ReLU(mean over heads of A * dA); relevance uses A_bar = mean over heads of ReLU(dA * A) and R <- R + A_bar @ R
from R = I (no normalisation, no discard); both carry A_bar through S like rollout.
"""
import json
import os
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import CvtConfig, CvtForImageClassification, ViTConfig, ViTForImageClassification

import make_model_fixtures  # this folder: the script's own directory is on sys.path

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "attention")
SETTINGS = [("mean", 0.0), ("max", 0.6)]
DISCARDS = [0.0, 0.6]


def labels(n):
    return dict(num_labels=n, id2label={i: f"class_{i}" for i in range(n)}, label2id={f"class_{i}": i for i in range(n)})


def perturb(model, gen, extra):
    """make_model_fixtures' perturbation, then noise of scale `extra` more on the query and key weights."""
    make_model_fixtures.perturb(model, gen)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("q_proj.weight", "k_proj.weight", "query.weight", "key.weight")):
                p.add_(extra * torch.randn(p.shape, generator=gen))


def transport(q_rows, q_cols, k_rows, k_cols, kernel, stride, padding, cls):
    """S (Tk x Tq): key (a, b) spread uniformly over the in-bounds query positions of its receptive field."""
    c = int(cls)
    S = np.zeros((c + k_rows * k_cols, c + q_rows * q_cols))
    if cls:
        S[0, 0] = 1.0
    for a in range(k_rows):
        for b in range(k_cols):
            rows = [r for r in range(a * stride - padding, a * stride - padding + kernel) if 0 <= r < q_rows]
            cols = [q for q in range(b * stride - padding, b * stride - padding + kernel) if 0 <= q < q_cols]
            for r in rows:
                for q in cols:
                    S[c + a * k_cols + b, c + r * q_cols + q] = 1.0 / (len(rows) * len(cols))
    return S


def carry(fused, S):
    """A = F·S summed key by key in a fixed order, so that query positions that the same keys cover with the
    same weights (CvT's grid edges) get bitwise equal entries: a BLAS product may round them apart, and
    discard would then break their tie differently."""
    A = np.zeros((fused.shape[0], S.shape[1]))
    for t in range(S.shape[0]):
        A += np.outer(fused[:, t], S[t])
    return A


def rollout(probs, transports, fuse, discard, rows, cols, grads=None):
    """Rollout of the fused heads; with grads, vit-explain's grad rollout (fuse ignored)."""
    batch, T = probs[0].shape[0], probs[0].shape[2]
    maps, mass = [], []
    for b in range(batch):
        R = np.eye(T)
        m = []
        for layer, (P, S) in enumerate(zip(probs, transports)):
            if grads is None:
                fused = getattr(P[b].astype(np.float64), fuse)(axis=0)
            else:
                fused = np.maximum((P[b] * grads[layer][b]).mean(axis=0), 0.0)
            m.append(fused[:, 0].mean())
            A = carry(fused, S).reshape(-1)
            k = int(A.size * discard)
            idx = np.argsort(A, kind="stable")[:k]
            A[idx[idx != 0]] = 0.0
            A = (A.reshape(T, T) + np.eye(T)) / 2
            A = A / A.sum(axis=-1, keepdims=True)
            R = A @ R
        row = R[0, 1:]
        maps.append((row / row.max()).reshape(rows, cols))
        mass.append(m)
    return np.stack(maps), np.array(mass).T


def relevance(probs, grads, transports, rows, cols):
    batch, T = probs[0].shape[0], probs[0].shape[2]
    maps = []
    for b in range(batch):
        R = np.eye(T)
        for P, G, S in zip(probs, grads, transports):
            A = carry(np.maximum(G[b] * P[b], 0.0).mean(axis=0), S)
            R = R + A @ R
        row = R[0, 1:]
        maps.append((row / row.max()).reshape(rows, cols))
    return np.stack(maps)


def to_pixels(probs, grads, stages, method):
    """Every layer, last first, with dense matrices: r <- r @ M_l (M = rownorm(F S + I), or I + F S for
    relevance), then per stage boundary the cls entry dropped and r @ E (the embedding's receptive fields).
    stages: [(layer indices, S, E, rows, cols, cls)] first stage first."""
    batch = probs[0].shape[0]
    pix, stage_maps, dropped = [], [[] for _ in stages], []
    for b in range(batch):
        r = None
        for s in reversed(range(len(stages))):
            layers, S, E, rows, cols, cls = stages[s]
            if r is None:
                r = np.zeros(S.shape[1])
                r[0] = 1.0
            for l in reversed(layers):
                P = probs[l][b].astype(np.float64)
                if method == "rollout":
                    F = P.mean(axis=0)
                elif method == "grad_rollout":
                    F = np.maximum((P * grads[l][b]).mean(axis=0), 0.0)
                else:
                    F = np.maximum(grads[l][b] * P, 0.0).mean(axis=0)
                M = carry(F, S) + np.eye(S.shape[1])
                if method != "relevance":
                    M = M / M.sum(axis=-1, keepdims=True)
                r = r @ M
            c = int(cls)
            stage_maps[s].append((r[c:] / r[c:].max()).reshape(rows, cols))
            if cls:
                if s == len(stages) - 1:
                    dropped.append(r[0] / r.sum())
                r = r[1:]
            r = r @ E
            last_E = E
        r = r / last_E.sum(axis=0)  # on the pixels: the E-weighted mean of the covering tokens, not their mass
        pix.append(r / r.max())
    return pix, [np.stack(m) for m in stage_maps], np.array(dropped)


def conv_out(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def checkpoint_tensors(model):
    """The weights under their checkpoint names: transformers renames some modules in memory (ViT's
    vit.layers.{i}.attention.q_proj) and maps them back when saving."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return {k: v.clone().contiguous() for k, v in load_file(os.path.join(d, "model.safetensors")).items()}


def make(name, model, config, pixel_shape, gen, capture, extra):
    perturb(model, gen, extra)
    weights = checkpoint_tensors(model)
    pixel_values = torch.randn(pixel_shape, generator=gen)
    model = model.double().eval()
    # One forward with the probabilities in the graph: the gradient of the chosen logits, then (a second
    # forward) of the loss for the head importance.
    x = pixel_values.double()
    logits, probs = capture(model, x)
    target = torch.tensor([int(logits[0].argmax()), (int(logits[1].argmax()) + 1) % logits.shape[1]])
    grads = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), probs)
    labels = torch.tensor([2, 0])
    logits2, probs2 = capture(model, x)
    loss_grads = torch.autograd.grad(torch.nn.functional.cross_entropy(logits2, labels, reduction="sum"), probs2)
    out = {"fixture.pixel_values": pixel_values, "fixture.target_class": target, "fixture.labels": labels}
    for i, (p, g, lg) in enumerate(zip(probs2, grads, loss_grads)):
        out[f"fixture.grads.{i}"] = g.float().contiguous()
        imp = (p.detach() * lg).sum(dim=(2, 3)).abs().mean(dim=0)  # (heads,)
        out[f"fixture.importance.{i}"] = imp / imp.norm()
    probs = [p.detach().float().contiguous() for p in probs]
    for i, p in enumerate(probs):
        out[f"fixture.probs.{i}"] = p

    # The rolled-out layers, their transports and the map's grid, from the config alone.
    H, W = pixel_shape[2], pixel_shape[3]
    if name == "vit":
        rows, cols = H // config.patch_size, W // config.patch_size
        layers = list(range(config.num_hidden_layers))
        transports = [np.eye(1 + rows * cols)] * len(layers)
    else:
        for s in range(3):
            H = conv_out(H, config.patch_sizes[s], config.patch_stride[s], config.patch_padding[s])
            W = conv_out(W, config.patch_sizes[s], config.patch_stride[s], config.patch_padding[s])
        rows, cols = H, W
        k, st, p = config.kernel_qkv[2], config.stride_kv[2], config.padding_kv[2]
        S = transport(rows, cols, conv_out(H, k, st, p), conv_out(W, k, st, p), k, st, p, True)
        layers = list(range(sum(config.depth[:2]), sum(config.depth)))
        transports = [S] * len(layers)
    stored = [probs[l].numpy().astype(np.float64) for l in layers]
    for fuse, discard in SETTINGS:
        m, mass = rollout(stored, transports, fuse, discard, rows, cols)
        out[f"fixture.rollout.{fuse}_{discard}"] = torch.from_numpy(m)
        out[f"fixture.cls_mass.{fuse}_{discard}"] = torch.from_numpy(mass.copy())
    stored_grads = [out[f"fixture.grads.{l}"].numpy().astype(np.float64) for l in layers]
    for discard in DISCARDS:
        m, _ = rollout(stored, transports, "mean", discard, rows, cols, grads=stored_grads)
        out[f"fixture.grad_rollout.{discard}"] = torch.from_numpy(m)
    out["fixture.relevance"] = torch.from_numpy(relevance(stored, stored_grads, transports, rows, cols))

    # Every stage down to the pixels.
    H, W = pixel_shape[2], pixel_shape[3]
    all_probs = [p.numpy().astype(np.float64) for p in probs]
    all_grads = [out[f"fixture.grads.{l}"].numpy().astype(np.float64) for l in range(len(probs))]
    stages = []
    if name == "vit":
        r_, c_ = H // config.patch_size, W // config.patch_size
        E = transport(H, W, r_, c_, config.patch_size, config.patch_size, 0, False)
        stages.append((list(range(config.num_hidden_layers)), np.eye(1 + r_ * c_), E, r_, c_, True))
    else:
        h, w, first = H, W, 0
        for st in range(3):
            k, s_, p_ = config.patch_sizes[st], config.patch_stride[st], config.patch_padding[st]
            h2, w2 = conv_out(h, k, s_, p_), conv_out(w, k, s_, p_)
            E = transport(h, w, h2, w2, k, s_, p_, False)
            kq, skv, pkv = config.kernel_qkv[st], config.stride_kv[st], config.padding_kv[st]
            S = transport(h2, w2, conv_out(h2, kq, skv, pkv), conv_out(w2, kq, skv, pkv), kq, skv, pkv, config.cls_token[st])
            stages.append((list(range(first, first + config.depth[st])), S, E, h2, w2, config.cls_token[st]))
            first += config.depth[st]
            h, w = h2, w2
    for method in ("rollout", "grad_rollout", "relevance"):
        pix, stage_maps, dropped = to_pixels(all_probs, all_grads, stages, method)
        out[f"fixture.to_pixels.{method}"] = torch.from_numpy(np.stack(pix).reshape(-1, H, W))
        for st, m in enumerate(stage_maps):
            out[f"fixture.to_pixels.{method}.stage{st}"] = torch.from_numpy(m)
        out[f"fixture.to_pixels.{method}.cls_dropped"] = torch.from_numpy(dropped)

    tensors = dict(weights)
    tensors.update({k: v.contiguous() for k, v in out.items()})
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{name}.safetensors")
    save_file(tensors, path, metadata={"format": "pt", "config": config.to_json_string(),
                                       "rollout_layers": json.dumps(layers), "settings": json.dumps(SETTINGS)})
    shapes = [tuple(p.shape) for p in probs]
    peak = [float(p.max()) for p in probs]
    os.chmod(path, 0o644)
    print(f"{path}: {os.path.getsize(path)} bytes, probs {shapes}, largest probability per layer "
          f"{[round(x, 3) for x in peak]}")


# (logits, every layer's probabilities as nodes of the graph that produced the logits).
def vit_capture(model, x):
    # The eager attention returns the tensor its product with v used: the dropout is the identity in eval.
    out = model(x, output_attentions=True)
    return out.logits, list(out.attentions)


def cvt_capture(model, x):
    # CvtSelfAttention: probs = softmax(scores); probs = self.dropout(probs). The dropout's input is the
    # softmax output; in eval mode the dropout returns it unchanged, and the product with v uses it.
    got = []
    hooks = [m.attention.attention.dropout.register_forward_hook(lambda mod, inp, out: got.append(inp[0]))
             for stage in model.cvt.encoder.stages for m in stage.layers]
    logits = model(x).logits
    for h in hooks:
        h.remove()
    return logits, got


def main():
    torch.manual_seed(0)
    vit_config = ViTConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                           image_size=16, patch_size=4, attn_implementation="eager", **labels(3))
    make("vit", ViTForImageClassification(vit_config), vit_config, (2, 3, 16, 16),
         torch.Generator().manual_seed(1), vit_capture, 0.2)
    torch.manual_seed(0)
    cvt_config = CvtConfig(embed_dim=[8, 16, 16], num_heads=[1, 2, 2], depth=[1, 2, 3], mlp_ratio=[2.0, 2.0, 2.0],
                           drop_path_rate=[0.0, 0.0, 0.0], **labels(3))
    make("cvt", CvtForImageClassification(cvt_config), cvt_config, (2, 3, 40, 56),
         torch.Generator().manual_seed(2), cvt_capture, 0.5)


if __name__ == "__main__":
    main()
