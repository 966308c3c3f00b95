"""Writes tests/fixtures/models/tiny-cvt: a small random CvT checkpoint (config.json + model.safetensors, as
transformers' save_pretrained writes them) and expected.json, the logits transformers computes for one
fixture PNG through the CvT image processor. tests/cli_test.sh runs `tessera predict` on it.
Needs torch, transformers, Pillow. Run from the repository root:  python3 tools/make_cli_fixture.py"""
import json
import os

import torch
from PIL import Image
from transformers import ConvNextImageProcessor, CvtConfig, CvtForImageClassification

out = "tests/fixtures/models/tiny-cvt"
image = "tests/fixtures/preprocess/rgb_37x23.png"
labels = {0: "glioma_tumor", 1: "meningioma_tumor", 2: "no_tumor", 3: "pituitary_tumor"}
torch.manual_seed(0)
config = CvtConfig(embed_dim=[8, 16, 24], num_heads=[1, 2, 3], depth=[1, 2, 3], drop_path_rate=[0.0, 0.0, 0.1],
                   num_labels=4, id2label=labels, label2id={v: k for k, v in labels.items()})
model = CvtForImageClassification(config).eval()
model.save_pretrained(out)
processor = ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875, resample=3,
                                   image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
pixels = processor(Image.open(image).convert("RGB"), return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values=pixels).logits[0].tolist()
json.dump({"image": image, "logits": logits}, open(os.path.join(out, "expected.json"), "w"), indent=1)
print(out, logits)
