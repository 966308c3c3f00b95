// The training report: RUN_DIR/report.html (self-contained, offline) and RUN_DIR/confusion_matrix.png,
// built only from the files a run leaves in its --out directory, so `tessera report RUN_DIR` can rebuild
// it at any time (also for a run that is still going or was killed).
//
// The files it reads (all written by train/trainer.cpp; every field listed is present unless marked):
//
// run.json — one object describing the run:
//   {"tessera_version": "0.1.0", "command": "tessera train ...", "started": "2026-11-26T10:00:00Z",
//    "model": "cvt-13", "device": "cpu", "precision": "fp32", "image_size": 224,
//    "classes": ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"],
//    "data": {"root": "/path/to/brain-tumor-mri", "synthetic": false,
//             "counts": {"train": [..per class..], "validation": [..], "Testing": [..]}},
//    "options": {...every training option, name → value...}}
//
// metrics.jsonl — one JSON object per line, in time order; a resumed run appends, so an epoch may appear
// twice (the later line wins):
//   {"event": "step", "epoch": 1, "step": 37, "global_step": 180, "loss": 1.23, "lr": 1.9e-5,
//    "grad_norm": 3.1, "images_per_s": 41.5, "elapsed_s": 12.0}
//   {"event": "epoch", "epoch": 1, "global_step": 144, "lr": 1.8e-5, "train_loss": 1.1, "train_accuracy": 0.52,
//    "val_loss": 0.9, "val_accuracy": 0.61, "val_f1_weighted": 0.6, "val_f1_macro": 0.58,
//    "val_recall_weighted": 0.61, "epoch_s": 95.0, "best": true}
//   Epochs count from 1. "train_accuracy" is over the (augmented) training batches of that epoch.
//
// eval_Testing.json — the final evaluation of the best checkpoint (the object `tessera eval --json` prints):
//   {"split": "Testing", "checkpoint": "RUN_DIR/best", "classes": [...], "accuracy": 0.81, "total": 394,
//    "per_class": [{"class": "glioma_tumor", "precision": .., "recall": .., "f1": .., "support": 100}, ...],
//    "macro_avg": {"precision": .., "recall": .., "f1": .., "support": 394}, "weighted_avg": {...},
//    "confusion_matrix": [[..], ..]   (rows: true class, columns: predicted class),
//    "novel": {"accuracy": 0.6, "total": 135, "correct": 81, "per_class_recall": [...], "list": "path"} or null,
//    "predictions": [{"path": "/abs/path/Testing/glioma_tumor/x.jpg", "label": 0, "pred": 2,
//                     "probs": [..], "novel": true}, ...]}     ("novel" only when the list exists)
//   Missing (training not finished): the report says so and shows what it has.
#pragma once
#include <string>

namespace tessera::train {

// Writes run_dir/report.html and, once eval_Testing.json exists, run_dir/confusion_matrix.png (both replaced
// atomically; a build without cairo writes no PNG and says so in the page and in one line on stderr). Throws naming the file when run.json is missing or any file is malformed; a missing
// metrics.jsonl or eval file only leaves its sections saying so (a half-written last line of metrics.jsonl,
// from a run being written or killed, is left out).
void write_report(const std::string& run_dir);

}  // namespace tessera::train
