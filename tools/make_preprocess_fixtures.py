#!/usr/bin/env python3
"""Writes the fixtures of tests/test_preprocess.cpp into tests/fixtures/preprocess/.

Reference implementations: Pillow (decoding, Image.resize) and transformers' slow image processors
(ViTImageProcessor / ConvNextImageProcessor with the hub settings of google/vit-base-patch16-224 and
microsoft/cvt-13). Tools only: the C++ build and tests never run Python; they read the files written here.

    python3 tools/make_preprocess_fixtures.py [--dataset /work/shared/datasets/brain-tumor-mri]

Needs numpy, Pillow, safetensors, transformers (no torch). Output (~250 KB, deterministic for a given
Pillow/transformers version):
  *.png / *.jpg        small synthetic images, one per decoding path (RGB, gray, gray+alpha, RGBA, palette
                       with transparency, 16-bit RGB, 16-bit gray, gray JPEG, colour 4:2:0 JPEG)
  expected.safetensors U8/F32 tensors, names below; __metadata__ records versions and the real images used:
    decoded/<img>                  [H,W,3] u8  PIL's Image.open(f).convert("RGB") (16-bit gray: v >> 8, see
                                               data/image.h for why that differs from PIL's clipping)
    resize/<img>/<filter>/<W>x<H>  [H,W,3] u8  PIL resize of decoded/<img>
    vit<S>/<img>, cvt<S>/<img>     [3,S,S] f32 processor pixel_values at a small size S (whole tensor)
    vit224s/<img>, cvt224s/<img>   [3,21,21] f32 the real presets' pixel_values[:, 3::11, 3::11] (the full
                                               [3,224,224] is 600 KB; the subsample still checks every
                                               step, and resize itself is checked exactly above)
    real/<k>/...                   the same for a few real dataset JPEGs, which stay outside the repo:
                                   decoded_s16 = decoded[::16, ::16], vit224s, cvt224s, size = [H, W]
  equalize.safetensors U8 tensors of Pillow's ImageOps.equalize (tessera_equalize):
    input/<k>, equalized/<k>       [H,W,3] u8  every decoded/<img> above, and small edge cases: one level
                                               (unchanged), two levels, fewer pixels than levels (step 0:
                                               unchanged), and a few pixels spread so that the last levels
                                               map past 255 before Image.point clips them
"""
import argparse
import os
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps
import PIL
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "preprocess")

# Hub settings (preprocessor_config.json of each checkpoint); rescale_factor is the default 1/255.
VIT = dict(do_resize=True, resample=2, do_rescale=True, do_normalize=True,
           image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
CVT = dict(do_resize=True, resample=3, crop_pct=0.875, do_rescale=True, do_normalize=True,
           image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
SMALL_VIT, SMALL_CVT = 16, 20  # whole-tensor checks at sizes where the file stays small
SUB = (slice(None), slice(3, None, 11), slice(3, None, 11))  # rows/cols 3, 14, ..., 223


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png16(path, arr):
    """16-bit PNG (colour type 2 for [H,W,3], 0 for [H,W]) written by hand: Pillow cannot write 16-bit RGB."""
    h, w = arr.shape[:2]
    ctype = 2 if arr.ndim == 3 else 0
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)) +
            png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)


def make_images(rng):
    """Returns {name: file name}; writes the files."""
    files = {}
    yy, xx = np.mgrid[0:23, 0:37]
    # Gradients in different directions per channel, plus noise: sharp local changes exercise the negative
    # bicubic lobes (clipping at 0 and 255) as well as smooth ramps; a few saturated pixels on purpose.
    g = np.stack([xx * 255 / 36, yy * 255 / 22, (xx + yy) * 255 / 58], -1) + rng.normal(0, 25, (23, 37, 3))
    g[5, 5] = 255; g[6, 5] = 0; g[17, 30] = [0, 255, 0]
    Image.fromarray(np.clip(g, 0, 255).astype(np.uint8), "RGB").save(os.path.join(OUT, "rgb_37x23.png"))
    files["rgb_37x23"] = "rgb_37x23.png"

    a = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    a[..., :3] = (a[..., :3] // 32) * 32  # blocks of colour compress well and keep the file small
    a[:, :, 3] = np.linspace(0, 255, 64).astype(np.uint8)[None, :]  # alpha from 0 to 255: dropped
    Image.fromarray(a, "RGBA").save(os.path.join(OUT, "rgba_64x64.png"))
    files["rgba_64x64"] = "rgba_64x64.png"

    gray = (np.add.outer(np.arange(30) * 7, np.arange(41) * 3) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(os.path.join(OUT, "gray_41x30.png"))
    files["gray_41x30"] = "gray_41x30.png"

    la = np.stack([gray[:20, :20], 255 - gray[:20, :20]], -1)
    Image.fromarray(la, "LA").save(os.path.join(OUT, "graya_20x20.png"))
    files["graya_20x20"] = "graya_20x20.png"

    pal = Image.fromarray(rng.integers(0, 7, (40, 50), dtype=np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 10, 20, 30, 200, 100, 50, 0, 0, 0])
    pal.info["transparency"] = 2  # a tRNS chunk: PIL's convert("RGB") ignores it, stb drops the alpha
    pal.save(os.path.join(OUT, "palette_50x40.png"), transparency=2)
    files["palette_50x40"] = "palette_50x40.png"

    r16 = rng.integers(0, 65536, (19, 27, 3)).astype(np.uint16)
    write_png16(os.path.join(OUT, "rgb16_27x19.png"), r16)
    files["rgb16_27x19"] = "rgb16_27x19.png"
    g16 = (np.add.outer(np.arange(12) * 5000, np.arange(15) * 300) % 65536).astype(np.uint16)
    write_png16(os.path.join(OUT, "gray16_15x12.png"), g16)
    files["gray16_15x12"] = "gray16_15x12.png"

    gj = np.clip(np.add.outer(np.arange(56), np.arange(80)) * 1.9 + rng.normal(0, 12, (56, 80)), 0, 255)
    Image.fromarray(gj.astype(np.uint8), "L").save(os.path.join(OUT, "gray_80x56.jpg"), quality=90)
    files["gray_80x56"] = "gray_80x56.jpg"
    cj = np.clip(np.stack([np.add.outer(np.arange(64) * 3, np.arange(96)), np.add.outer(np.arange(64), np.arange(96) * 2),
                           np.full((64, 96), 128)], -1) + rng.normal(0, 10, (64, 96, 3)), 0, 255)
    Image.fromarray(cj.astype(np.uint8), "RGB").save(os.path.join(OUT, "rgb_96x64.jpg"), quality=90, subsampling=2)
    files["rgb_96x64"] = "rgb_96x64.jpg"
    return files


def decoded_rgb(path):
    im = Image.open(path)
    if im.mode in ("I;16", "I;16B", "I"):  # 16-bit gray: tessera keeps the high byte (PIL would clip)
        v = (np.array(im).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(v[:, :, None], 3, axis=2)
    return np.array(im.convert("RGB"))


# Output sizes per image: same size (copy), down, strong down (wide antialiasing kernels), up, one axis
# only (each pass alone), mixed (down in x, up in y), 1x1 and odd sizes throughout.
RESIZES = {
    "rgb_37x23": [(37, 23), (17, 11), (5, 3), (1, 1), (75, 49), (37, 50), (50, 23), (29, 40)],
    "rgba_64x64": [(20, 30), (50, 67), (64, 31)],
    "palette_50x40": [(13, 47)],
    "gray_80x56": [(47, 33), (9, 7)],
    "rgb_96x64": [(13, 9), (97, 30)],
    "rgb16_27x19": [(40, 11)],
}


def processors():
    from transformers import ViTImageProcessor, ConvNextImageProcessor
    return {
        "vit": lambda s: ViTImageProcessor(size=s, **VIT),
        "cvt": lambda s: ConvNextImageProcessor(size=s, **CVT),
    }


def run(proc, rgb):
    return proc(Image.fromarray(rgb, "RGB"), return_tensors="np")["pixel_values"][0].astype(np.float32)


def equalize_cases(decoded, rng):
    cases = dict(decoded)
    cases["one_level"] = np.full((5, 7, 3), 77, np.uint8)
    two = np.zeros((32, 32, 3), np.uint8)  # half black: step 2, level 200 maps to 513 // 2 -> 255
    two[16:, :] = 200
    cases["two_levels"] = two
    cases["step0"] = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)  # 99 pixels: step = 0
    # Band 0: 520 pixels, 480 on level 255 (the highest, left out of step) and 40 on level 3: step =
    # 40 // 255 = 0 -> unchanged. Band 1: every level 0..253 two or three times: step = (520 - 2) // 255 = 2,
    # and the last levels' n // step passes 255 before the clip. Band 2: four levels at random.
    clip = np.zeros((20, 26, 3), np.uint8)
    clip[..., 0] = np.where(np.arange(520).reshape(20, 26) < 40, 3, 255)
    clip[..., 1] = (np.arange(520).reshape(20, 26) % 254).astype(np.uint8)
    clip[..., 2] = rng.integers(0, 4, (20, 26)) * 60
    cases["clip"] = clip
    out = {}
    for k, rgb in cases.items():
        out[f"input/{k}"] = np.ascontiguousarray(rgb)
        out[f"equalized/{k}"] = np.array(ImageOps.equalize(Image.fromarray(rgb, "RGB")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="/work/shared/datasets/brain-tumor-mri")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(1234)
    files = make_images(rng)
    procs = processors()
    t = {}
    for name, fname in files.items():
        rgb = decoded_rgb(os.path.join(OUT, fname))
        t[f"decoded/{name}"] = rgb
        for w, h in RESIZES.get(name, []):
            for fname_f, f in (("bilinear", Image.Resampling.BILINEAR), ("bicubic", Image.Resampling.BICUBIC)):
                t[f"resize/{name}/{fname_f}/{w}x{h}"] = np.array(Image.fromarray(rgb, "RGB").resize((w, h), f))
        if name in ("graya_20x20", "gray16_15x12", "gray_41x30", "rgb16_27x19"):
            continue  # decode-path fixtures; the processors are checked on the others
        t[f"vit{SMALL_VIT}/{name}"] = run(procs["vit"](SMALL_VIT), rgb)
        t[f"cvt{SMALL_CVT}/{name}"] = run(procs["cvt"](SMALL_CVT), rgb)
        t[f"vit224s/{name}"] = np.ascontiguousarray(run(procs["vit"](224), rgb)[SUB])
        t[f"cvt224s/{name}"] = np.ascontiguousarray(run(procs["cvt"](224), rgb)[SUB])

    # 16-bit RGB: PIL keeps the high byte too, so tessera's rule agrees with PIL there (checked here).
    r16 = np.array(Image.open(os.path.join(OUT, "rgb16_27x19.png")).convert("RGB"))
    assert np.array_equal(r16, t["decoded/rgb16_27x19"])

    meta = {"pillow": PIL.__version__, "numpy": np.__version__}
    try:
        import transformers
        meta["transformers"] = transformers.__version__
    except ImportError:
        pass
    real = []
    for cls in ("glioma_tumor", "no_tumor", "pituitary_tumor"):
        d = os.path.join(args.dataset, "Testing", cls)
        if os.path.isdir(d):
            real.append(os.path.join("Testing", cls, sorted(os.listdir(d))[0]))
    for k, rel in enumerate(real):
        rgb = np.array(Image.open(os.path.join(args.dataset, rel)).convert("RGB"))
        t[f"real/{k}/size"] = np.array(rgb.shape[:2], dtype=np.int64)
        t[f"real/{k}/decoded_s16"] = np.ascontiguousarray(rgb[::16, ::16])
        t[f"real/{k}/vit224s"] = np.ascontiguousarray(run(procs["vit"](224), rgb)[SUB])
        t[f"real/{k}/cvt224s"] = np.ascontiguousarray(run(procs["cvt"](224), rgb)[SUB])
        meta[f"real/{k}"] = rel.replace(os.sep, "/")
    meta["real_count"] = str(len(real))
    meta["small_vit"], meta["small_cvt"] = str(SMALL_VIT), str(SMALL_CVT)
    save_file({k: np.ascontiguousarray(v) for k, v in t.items()}, os.path.join(OUT, "expected.safetensors"), meta)
    os.chmod(os.path.join(OUT, "expected.safetensors"), 0o644)
    eq = equalize_cases({k[len("decoded/"):]: v for k, v in t.items() if k.startswith("decoded/")}, rng)
    save_file(eq, os.path.join(OUT, "equalize.safetensors"), {"pillow": PIL.__version__})
    os.chmod(os.path.join(OUT, "equalize.safetensors"), 0o644)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(t)} tensors, {len(files)} images, {total / 1024:.0f} KB in {OUT}")


if __name__ == "__main__":
    main()
