// `tessera train`: fine-tuning or from-scratch training of a CvT/ViT image classifier on an image-folder
// data set, with per-epoch evaluation, atomic checkpoints, exact resume and a report.
//
// Recipes. Options start from a named recipe and explicit options override it:
//   default  from-scratch CvT-13 on the brain-tumour MRI set (see recipe_options for every value and why)
//   study    the study's Hugging Face Trainer protocol (train/README.md): 10 epochs, lr 2e-5, batch 16,
//            weight decay 0.01 with the Trainer's groups, linear schedule without warmup, clipping 1.0,
//            cross-entropy without smoothing, its augmentation on 224×224-resized images, best epoch by
//            validation accuracy (strict >); the head is replaced unless keep_imagenet_head.
//   cpu      a reduced run for machines without a GPU (a small CvT at low resolution, a few epochs):
//            minutes on 2 cores, the same pipeline and report end to end.
//
// The run directory (--out) holds, besides the report files (train/report.h):
//   run.json, metrics.jsonl, eval_Testing.json
//   checkpoint-epoch-NNN/   config.json, model.safetensors, optimizer.safetensors, trainer_state.json,
//                           preprocessor_config.json, SHA256SUMS (every other file's SHA-256, written last)
//                           (with --ema: model.safetensors is the weights' moving average, the model the run
//                           selects and delivers, and raw_model.safetensors the weights being trained)
//   last -> checkpoint-epoch-NNN, best -> checkpoint-epoch-MMM   (symbolic links, replaced atomically)
// A checkpoint is written into a hidden temporary folder and renamed into place, then the links are
// switched, then checkpoints that are neither last nor best are removed: a run killed at any instant
// leaves a complete last checkpoint (or none yet), and `--resume RUN_DIR` continues from it.
//
// Integrity. What a resume, eval or predict reads is verified before it is trusted: the checkpoint against
// its SHA256SUMS, trainer_state.json against the folder's epoch, the step count, the optimizer's step
// counters and metrics.jsonl, and the data against the fingerprints the checkpoint recorded (a changed
// data set is refused unless --allow-data-change). novel_testing.txt names the Testing fingerprint it was
// computed for and is applied to no other data.
//
// Determinism. Everything random is keyed by the seed: the split, the initial weights, the loader's
// order and augmentation (keyed by epoch), mixup/CutMix (keyed by step), and dropout/drop-path (one
// Philox stream whose offset is checkpointed). A resumed run therefore produces the same weights, bit for bit, as one never interrupted
// (on the same device and thread count).
#pragma once
#include <cstdint>
#include <iosfwd>
#include <optional>
#include <stdexcept>
#include <string>

#include "engine/core/dtype.h"
#include "train/options.h"

namespace tessera::train {

// The one statement of whether the CvT/ViT models may train on the GPU: false, because that path has
// never been run on a GPU (its CUDA kernels are compiled, not run). `tessera --version`, resolve_device's
// notes and tools/run.sh (through --version) all derive from these two.
constexpr bool kModelsOnCuda = false;
// Why not, in words ("the CvT/ViT CUDA path has not been verified on a GPU ..."); empty once it is.
std::string models_on_cuda_caveat();

// Auto: cuda when present and kModelsOnCuda, else the CPU (with a note when a GPU is there). Explicit cuda
// without a usable GPU is an error; explicit cuda while the path is unverified runs with a warning on `log`.
Device resolve_device(DeviceChoice choice, std::ostream& log);

struct TrainSummary {
  std::string out;             // the run directory
  int64_t best_epoch = 0;
  double best_val_accuracy = 0;
  std::optional<double> test_accuracy, novel_accuracy;
  double seconds = 0;          // wall time of this invocation
};

// Thrown by train() when SIGINT or SIGTERM arrived: the step in progress finished, nothing half-written is
// left, and the message says how far the run got and how to resume. The CLI exits with 128 + signal
// (130, 143). A second signal while the step finishes stops the process at once (the default action).
struct TrainInterrupted : std::runtime_error {
  TrainInterrupted(int sig, const std::string& message) : std::runtime_error(message), signal(sig) {}
  int signal;
};

// Runs (or resumes) training; progress and summaries go to `log` (the bar to stderr when a terminal).
TrainSummary train(TrainOptions options, std::ostream& log, const std::string& command_line = "");

}  // namespace tessera::train
