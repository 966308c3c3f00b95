#!/usr/bin/env python3
"""Parity fixtures for tessera's CvT and ViT, computed by Hugging Face transformers (tools only, never needed
to build or test: the fixtures are checked in).

    python3 tools/make_model_fixtures.py                 # writes tests/fixtures/models/{cvt,vit}.safetensors
    python3 tools/make_model_fixtures.py --full OUTDIR   # full-size CvT-13 / ViT-B/16 references (by hand)

Small mode: small random-init configs that keep every structural feature (CvT: three stages, cls token in
the last, stride-2 key/value convs, several heads, BatchNorm; ViT: cls token and position embeddings). Every
tensor is float32 and every seed fixed. One file per architecture holds:
  <checkpoint names>            the weights, exactly as model.safetensors (before anything below ran)
  fixture.pixel_values          (B, 3, H, W) input batch
  fixture.labels                (B,) int64
  fixture.logits_eval           eval-mode logits
  fixture.logits_train          train-mode logits (drop path 0, so comparable)
  fixture.loss                  mean cross-entropy of the train-mode logits
  fixture.grad.<name>           d loss / d parameter for EVERY parameter (train mode)
  fixture.after.<buffer>        CvT: BatchNorm running stats after that one train forward
  fixture.adamw_losses          (4,) train-mode losses before each of 3 AdamW steps and after the last, with
                                the Trainer's groups (no decay for biases and LayerNorm parameters, weight decay
                                0.01), lr 1e-3, global-norm clipping at 1.0
  ViT only: fixture.pixel_values_interp / fixture.logits_interp: a 24x40 input with interpolate_pos_encoding
The config.json text is in the metadata under "config".

The weights are not left at the models' init (N(0, 0.02²) weights and zero biases make almost every
activation tiny): every parameter gets noise of scale 0.1 added and BatchNorm running statistics are set to
non-trivial values, so each term of the forward contributes measurably.

--full: builds full-size CvT-13 and ViT-B/16 with random weights (seeded), saves each as a checkpoint folder
(config.json + model.safetensors, via save_pretrained), runs 3 brain-tumor MRI images through each
checkpoint's image processor (constructed with the hub processors' settings) and the model in eval mode, and
writes OUTDIR/<model>/reference.safetensors with pixel_values and logits (and the image paths in metadata).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import CvtConfig, CvtForImageClassification, ViTConfig, ViTForImageClassification

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATASET = os.path.join(os.path.dirname(ROOT), "shared", "datasets", "brain-tumor-mri")


def tiny_cvt_config():
    return CvtConfig(
        embed_dim=[16, 24, 32], num_heads=[1, 2, 2],
        # transformers indexes linspace(0, rate, depth[s]) by the stage number: depth[s] must exceed s.
        depth=[1, 2, 3],
        drop_path_rate=[0.0, 0.0, 0.0],  # train and eval then differ only by BatchNorm
        num_labels=5, id2label={i: f"class_{i}" for i in range(5)}, label2id={f"class_{i}": i for i in range(5)},
    )


def tiny_vit_config():
    return ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, num_labels=5, id2label={i: f"class_{i}" for i in range(5)},
        label2id={f"class_{i}": i for i in range(5)},
    )


def perturb(model, gen):
    """Moves every parameter off its init and gives BatchNorm non-trivial running statistics."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=gen))
            elif name.endswith("num_batches_tracked"):
                b.fill_(3)


def trainer_groups(model, weight_decay):
    """transformers.Trainer's grouping: decay unless in a LayerNorm module or the name contains 'bias'."""
    in_ln = set()
    for mname, m in model.named_modules():
        if isinstance(m, torch.nn.LayerNorm):
            for pname, _ in m.named_parameters(recurse=False):
                in_ln.add(f"{mname}.{pname}" if mname else pname)
    decay = [p for n, p in model.named_parameters() if n not in in_ln and "bias" not in n]
    no_decay = [p for n, p in model.named_parameters() if n in in_ln or "bias" in n]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_fixture(name, cls, config, image_hw, batch, out_path, interp_hw=None):
    torch.manual_seed(0)
    model = cls(config)
    gen = torch.Generator().manual_seed(1)
    perturb(model, gen)
    weights = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}

    pixel_values = torch.randn((batch, 3, *image_hw), generator=gen)
    labels = torch.randint(0, config.num_labels, (batch,), generator=gen)
    out = {f"fixture.{k}": v for k, v in (("pixel_values", pixel_values), ("labels", labels))}

    model.eval()
    with torch.no_grad():
        out["fixture.logits_eval"] = model(pixel_values).logits
        if interp_hw is not None:
            pv = torch.randn((batch, 3, *interp_hw), generator=gen)
            out["fixture.pixel_values_interp"] = pv
            out["fixture.logits_interp"] = model(pv, interpolate_pos_encoding=True).logits

    model.train()
    res = model(pixel_values, labels=labels)
    res.loss.backward()
    out["fixture.logits_train"] = res.logits.detach()
    out["fixture.loss"] = res.loss.detach()
    for n, p in model.named_parameters():
        out[f"fixture.grad.{n}"] = p.grad.detach().clone()
    for n, b in model.named_buffers():
        out[f"fixture.after.{n}"] = b.detach().clone()

    # Three AdamW steps from the saved weights, as the Trainer runs them.
    model = cls(config)
    model.load_state_dict(weights)
    model.train()
    opt = torch.optim.AdamW(trainer_groups(model, 0.01), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    losses = []
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        loss = model(pixel_values, labels=labels).loss
        losses.append(loss.item())
        if step == 3:
            break
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    out["fixture.adamw_losses"] = torch.tensor(losses, dtype=torch.float32)

    tensors = dict(weights)
    tensors.update({k: v.contiguous() for k, v in out.items()})
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    save_file(tensors, out_path, metadata={"format": "pt", "config": config.to_json_string()})
    n = sum(p.numel() for p in model.parameters())
    print(f"{out_path}: {name}, {n} parameters, logits_eval[0] {out['fixture.logits_eval'][0].tolist()}, "
          f"losses {losses}")


def full_mode(outdir):
    from PIL import Image
    from transformers import ConvNextImageProcessor, ViTImageProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

    images = []
    for cls_name in ("glioma_tumor", "meningioma_tumor", "no_tumor"):
        folder = os.path.join(DATASET, "Testing", cls_name)
        images.append(os.path.join(folder, sorted(os.listdir(folder))[0]))
    pil = [Image.open(p).convert("RGB") for p in images]  # the processors do not convert; callers do
    models = {
        # microsoft/cvt-13's preprocessor_config.json: ConvNextImageProcessor, shortest_edge 224, crop_pct 0.875
        "cvt-13": (CvtForImageClassification, CvtConfig(),
                   ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875,
                                          resample=PILImageResampling.BICUBIC, image_mean=IMAGENET_DEFAULT_MEAN,
                                          image_std=IMAGENET_DEFAULT_STD)),
        # google/vit-base-patch16-224's: ViTImageProcessor, 224x224, bilinear, mean/std 0.5
        "vit-b16": (ViTForImageClassification, ViTConfig(),
                    ViTImageProcessor(size={"height": 224, "width": 224}, resample=PILImageResampling.BILINEAR,
                                      image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])),
    }
    for name, (cls, config, processor) in models.items():
        config.num_labels = 1000
        torch.manual_seed(0)
        model = cls(config).eval()
        folder = os.path.join(outdir, name)
        model.save_pretrained(folder)  # config.json + model.safetensors
        pixel_values = processor(images=pil, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values).logits
        save_file({"pixel_values": pixel_values.contiguous(), "logits": logits.contiguous()},
                  os.path.join(folder, "reference.safetensors"),
                  metadata={"format": "pt", "images": json.dumps(images)})
        print(f"{folder}: {sum(p.numel() for p in model.parameters())} parameters, "
              f"argmax {logits.argmax(-1).tolist()}, logits[0,:3] {logits[0, :3].tolist()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", metavar="OUTDIR", help="write full-size CvT-13 / ViT-B/16 references instead")
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "models"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.full:
        full_mode(args.full)
        return
    make_fixture("CvT", CvtForImageClassification, tiny_cvt_config(), (64, 64), 3, os.path.join(args.out, "cvt.safetensors"))
    make_fixture("ViT", ViTForImageClassification, tiny_vit_config(), (32, 32), 3, os.path.join(args.out, "vit.safetensors"),
                 interp_hw=(24, 40))


if __name__ == "__main__":
    sys.exit(main())
