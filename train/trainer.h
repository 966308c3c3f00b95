// `tessera train`: fine-tuning or from-scratch training of a CvT/ViT image classifier on an image-folder
// data set, with per-epoch evaluation, atomic checkpoints, exact resume and a report.
//
// Recipes. Options start from a named recipe and explicit options override it:
//   default  from-scratch CvT-13 on the brain-tumour MRI set (see recipe_options for every value and why)
//   study    the study's Hugging Face Trainer protocol (docs TRAINING.md): 10 epochs, lr 2e-5, batch 16,
//            weight decay 0.01 with the Trainer's groups, linear schedule without warmup, clipping 1.0,
//            cross-entropy without smoothing, its augmentation on 224×224-resized images, best epoch by
//            validation accuracy (strict >); the head is replaced unless keep_imagenet_head.
//   cpu      a reduced run for machines without a GPU (a small CvT at low resolution, a few epochs):
//            minutes on 2 cores, the same pipeline and report end to end.
//
// The run directory (--out) holds, besides the report files (train/report.h):
//   run.json, metrics.jsonl, eval_Testing.json
//   checkpoint-epoch-NNN/   config.json, model.safetensors, optimizer.safetensors, trainer_state.json
//   last -> checkpoint-epoch-NNN, best -> checkpoint-epoch-MMM   (symbolic links, replaced atomically)
// A checkpoint is written into a hidden temporary folder and renamed into place, then the links are
// switched, then checkpoints that are neither last nor best are removed: a run killed at any instant
// leaves a complete last checkpoint (or none yet), and `--resume RUN_DIR` continues from it.
//
// Determinism. Everything random is keyed by the seed: the split, the initial weights, the loader's
// order and augmentation (keyed by epoch), and dropout/drop-path (one Philox stream whose offset is
// checkpointed). A resumed run therefore produces the same weights, bit for bit, as one never interrupted
// (on the same device and thread count).
#pragma once
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/core/dtype.h"

namespace tessera::train {

struct TrainOptions {
  std::string recipe = "default";  // default | study | cpu
  // ---- model
  std::string model = "cvt-13";  // a preset (models/config.h); --config overrides
  std::string config;            // a Hugging Face config.json
  std::string weights;           // initial weights (model.safetensors or checkpoint dir); empty: from scratch
  bool keep_imagenet_head = false;  // the study's mistake: train the checkpoint's own (1000-class) head
  double drop_path = -1;            // CvT: the last stage's drop-path rate; < 0 keeps the config's
  // ---- data
  std::string data;              // ROOT/Training + ROOT/Testing, or ROOT/<class> (no test split)
  bool synthetic = false;        // generate a synthetic 4-class set instead (the data could not be found)
  double val_fraction = 0.2;
  int image_size = 224;
  bool static_augment = false;   // the study's mistake: one fixed augmented copy per image, made once
  double rotation = 15, crop_scale_min = 0.8, brightness = 0.2, contrast = 0.2, p_vflip = 0.5;
  bool study_pipeline = false;   // resize to image_size² before augmenting and the processor on top (study)
  int64_t max_train_samples = 0; // > 0: a stratified subset of the training split (quick runs)
  int workers = 0;               // loader threads; 0: all cores
  // ---- optimisation
  int64_t epochs = 10, batch_size = 16, eval_batch_size = 64;
  double lr = 2e-5, weight_decay = 0.01, label_smoothing = 0, clip_grad = 1.0;
  std::string schedule = "linear";  // constant | linear | cosine
  std::string warmup = "0";         // steps ("500"), a fraction of all steps ("0.05") or epochs ("2ep")
  uint64_t seed = 42;
  // ---- running
  std::string device;               // cuda | cpu; empty: cuda when present and supported
  std::string precision = "fp32";   // fp32 | bf16
  std::string out = "runs/latest";
  std::string resume;               // a run directory (its last checkpoint) to continue
  int64_t log_every = 10;           // steps between metrics.jsonl step lines
  bool progress = true;             // the progress bar on stderr
  int64_t halt_after_steps = 0;     // tests: exit abruptly (as if killed) after this many steps in total
};

// Whether models can train on the GPU in this build: false until the CvT/ViT CUDA kernels (convolution,
// layer norm, batch norm, attention) exist; `tessera --version` prints it and tools/run.sh reads it.
constexpr bool kModelsOnCuda = false;

// "cuda", "cpu" or "" (cuda when present and kModelsOnCuda). Explicit cuda without a usable GPU is an
// error; explicit cuda before the path is verified runs with a warning on `log`.
Device resolve_device(const std::string& name, std::ostream& log);

// The named recipe's options (throws listing the known names).
TrainOptions recipe_options(const std::string& name);
std::vector<std::string> recipe_names();

nlohmann::json options_to_json(const TrainOptions& o);
TrainOptions options_from_json(const nlohmann::json& j, const std::string& source);

// Checks every option (ranges, names, files that must exist); throws one std::invalid_argument naming
// each problem.
void validate(const TrainOptions& o);

struct TrainSummary {
  std::string out;             // the run directory
  int64_t best_epoch = 0;
  double best_val_accuracy = 0;
  std::optional<double> test_accuracy, novel_accuracy;
  double seconds = 0;          // wall time of this invocation
};

// Runs (or resumes) training; progress and summaries go to `log` (the bar to stderr when a terminal).
TrainSummary train(TrainOptions options, std::ostream& log, const std::string& command_line = "");

}  // namespace tessera::train
