// The options of `tessera train`: one record (TrainOptions) and ONE table describing each option (its
// run.json name, command-line flag, help, validator, and whether --resume may change it). Serialisation,
// the command line (tools/train.cpp), validation and the resume rule are all derived from the table, so an
// option is added in two places: its member and its row.
//
// Choices that are words on the command line (device, precision, schedule, warmup) are Parsed<T> values:
// the text is parsed once, where it is read, and the rest of the code compares enums, never strings.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/image.h"
#include "train/schedule.h"

namespace tessera::train {

enum class Precision { FP32, BF16 };
enum class DeviceChoice { Auto, CPU, CUDA };  // Auto: "" (cuda when present and the model path verified)
// How Training is split into train and validation: whole near-duplicate groups (data/dataset.h
// grouped_split), or sample by sample (the study's random stratified split, which puts copies of one
// picture on both sides and so overstates validation accuracy).
enum class SplitKind { Grouped, Random };

// Warmup as given: "500" steps, "0.05" of all steps (HF's warmup_ratio) or "2ep" epochs.
struct Warmup {
  enum class Unit { Steps, Fraction, Epochs };
  Unit unit = Unit::Steps;
  double amount = 0;
  int64_t steps(int64_t steps_per_epoch, int64_t total_steps) const;
  bool operator==(const Warmup&) const = default;
};

// --drop-path: the last CvT stage's rate in [0, 1), or "" (no value) to keep the model config's. Text, so
// that "not given" is no number a user could type (a negative rate is refused, not read as "keep").
struct DropPath {
  std::optional<double> rate;
};

// Each parses `text` into `out` and returns "" or the problem, worded to follow the option's name
// ("--precision must be fp32 or bf16, not 'fp8'").
std::string parse_text(std::string_view text, Precision& out);
std::string parse_text(std::string_view text, DeviceChoice& out);
std::string parse_text(std::string_view text, LrSchedule::Kind& out);
std::string parse_text(std::string_view text, Warmup& out);
std::string parse_text(std::string_view text, SplitKind& out);
std::string parse_text(std::string_view text, DropPath& out);

// A value given as text (command line, recipe, run.json) and parsed there. Text that does not parse is
// kept with its problem rather than thrown at once, so that validate() names it beside every other bad
// option; the text is what run.json records, so a run resumes with exactly what it was given.
template <typename T>
class Parsed {
 public:
  Parsed(std::string text) : text_(std::move(text)) { error_ = parse_text(text_, value_); }
  Parsed(const char* text) : Parsed(std::string(text)) {}
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& text() const { return text_; }
  // The value; only after validate() (a bad text throws naming it).
  const T& operator*() const {
    if (!ok()) throw std::invalid_argument("'" + text_ + "': " + error_);
    return value_;
  }
  bool operator==(const Parsed& other) const { return text_ == other.text_; }

 private:
  std::string text_, error_;
  T value_{};
};

template <typename T>
void to_json(nlohmann::json& j, const Parsed<T>& p) { j = p.text(); }
template <typename T>
void from_json(const nlohmann::json& j, Parsed<T>& p) { p = Parsed<T>(j.get<std::string>()); }

// "--device must be cuda or cpu, not 'tpu'" for anything else (eval, predict: their --device).
DeviceChoice parse_device(const std::string& text);

struct TrainOptions {
  std::string recipe = "default";  // default | study | cpu
  // ---- model
  std::string model = "cvt-13";  // a preset (models/config.h); --config overrides
  std::string config;            // a Hugging Face config.json
  std::string weights;           // initial weights (model.safetensors or checkpoint dir); empty: from scratch
  bool keep_imagenet_head = false;  // the study's mistake: train the checkpoint's own (1000-class) head
  Parsed<DropPath> drop_path = "";  // CvT: the last stage's drop-path rate; "" keeps the config's
  int channels = 3;                 // input planes: 3 (RGB) or 1 (luma; the MRI images are grayscale)
  // ---- data
  std::string data;              // ROOT/Training + ROOT/Testing, or ROOT/<class> (no test split)
  bool synthetic = false;        // generate a synthetic 4-class set instead (the data could not be found)
  double val_fraction = 0.2;
  Parsed<SplitKind> split = "random";  // grouped | random
  bool per_image_norm = false;   // standardise each image by its own mean and std (not fixed constants)
  int image_size = 224;
  bool crop_foreground = false;  // every image cropped to the square around its foreground first
  bool equalize = false;         // every image's histogram equalised (after the crop)
  bool static_augment = false;   // the study's mistake: one fixed augmented copy per image, made once
  double rotation = 15, crop_scale_min = 0.8, brightness = 0.2, contrast = 0.2, p_vflip = 0.5;
  double gamma = 0, blur = 0, noise = 0, erase = 0;  // scanner-like intensity changes and random erasing
  double mixup = 0, cutmix = 0;  // Beta(α, α) of mixup / CutMix; 0: off
  double mixstyle = 0, mixstyle_alpha = 0.1;  // MixStyle: share of batches mixed (0: off), its Beta(α, α)
  bool study_pipeline = false;   // resize to image_size² before augmenting and the processor on top (study)
  int64_t max_train_samples = 0; // > 0: a stratified subset of the training split (quick runs)
  int workers = 0;               // loader threads; 0: all cores
  int64_t max_image_pixels = ImageLimits::kDefaultMaxPixels;  // larger images are skipped, not decoded
  // ---- optimisation
  int64_t epochs = 10, batch_size = 16, eval_batch_size = 64;
  double lr = 2e-5, weight_decay = 0.01, label_smoothing = 0, clip_grad = 1.0;
  bool balanced_loss = false;    // cross-entropy weighted by inverse class frequency of the train split
  double ema = 0;                // decay of the weights' moving average (0: none)
  bool tta = false;              // evaluation averages the image's and its mirror image's probabilities
  Parsed<LrSchedule::Kind> schedule = "linear";  // constant | linear | cosine
  Parsed<Warmup> warmup = "0";
  int64_t seed = 42;  // signed, so that -1 is refused rather than wrapped to 2^64-1
  // ---- running
  Parsed<DeviceChoice> device = "";         // cuda | cpu | "" (auto)
  Parsed<Precision> precision = "fp32";     // fp32 | bf16
  std::string out = "runs/latest";
  std::string resume;               // a run directory (its last checkpoint) to continue
  bool allow_data_change = false;   // --resume over a data set whose fingerprint changed
  int64_t log_every = 10;           // steps between metrics.jsonl step lines
  bool progress = true;             // the progress bar on stderr
  int64_t halt_after_steps = 0;     // tests: exit abruptly (as if killed) after this many steps in total
  std::string halt_in_checkpoint;   // tests: "EPOCH:STAGE", exit abruptly inside that epoch's checkpoint write
};

// One row of the table.
template <typename T>
struct Option {
  const char* name;        // the key in run.json's "options"
  const char* flags = "";  // CLI11 names, the canonical one first ("--recipe,--preset"); "" for none
  const char* help = "";
  T TrainOptions::*member = nullptr;
  // The problem with a value ("must be at least 1"), or "" when it is fine; may look at other options.
  // Parsed<T> options need none: their parse error is the problem.
  std::string (*problem)(const T& value, const TrainOptions& all) = nullptr;
  // Whether a resumed run may take a new value: only options saying where and how it runs (never what
  // it computes) may; the rest come from the run's run.json.
  bool resume_may_change = false;
  bool in_run_json = true;  // false: about this invocation only (the progress bar, a testing aid)
  bool hidden = false;      // on the command line but not in --help (testing aids)

  // How errors name the option: its flag (without CLI11's '!', which makes a flag set false), else its
  // run.json name.
  std::string label() const {
    const std::string f = flags;
    return f.empty() ? name : f.substr(f[0] == '!', f.find(',') - (f[0] == '!'));
  }
};

// Calls f(row) for each row of the table, in the order of TrainOptions.
template <typename F>
void for_each_option(F&& f);

// The named recipe's options (throws listing the known names).
TrainOptions recipe_options(const std::string& name);
std::vector<std::string> recipe_names();

// The options run.json records, and back; a missing or mistyped one throws naming `source` and the option.
nlohmann::json options_to_json(const TrainOptions& o);
TrainOptions options_from_json(const nlohmann::json& j, const std::string& source);

// Checks every option (ranges, names, combinations); throws one std::invalid_argument naming each problem.
void validate(const TrainOptions& o);

// The run's length, once the data gives its steps per epoch: throws one std::invalid_argument naming the
// option when the run would have no optimizer step per epoch (e.g. --max-train-samples 1: one image, and
// batch norm cannot use a batch of one), more steps than an int64 holds (--epochs), or a warmup longer than
// the whole run (--warmup '1e30ep', '500' steps of a 100-step run).
void validate_schedule(const TrainOptions& o, int64_t steps_per_epoch, int64_t train_images);

// A resumed run: the run's own options (`stored`), with what `invocation` gives (a value other than the
// option's default) for the options --resume may change; out is the run directory being resumed.
TrainOptions resume_options(const TrainOptions& stored, const TrainOptions& invocation);

// ------------------------------------------------------------------------------------------------ the table

namespace detail {
template <typename T>
std::string at_least_1(const T& v, const TrainOptions&) { return v >= 1 ? "" : "must be at least 1"; }
template <typename T>
std::string non_negative(const T& v, const TrainOptions&) { return v >= 0 ? "" : "must be >= 0"; }
inline std::string in_0_1(const double& v, const TrainOptions&) { return v >= 0 && v <= 1 ? "" : "must be in [0, 1]"; }
std::string finite_positive(const double& v, const TrainOptions&);
std::string finite_non_negative(const double& v, const TrainOptions&);
}  // namespace detail

template <typename F>
void for_each_option(F&& f) {
  using O = TrainOptions;
  using namespace detail;
  f(Option<std::string>{.name = "recipe", .flags = "--recipe,--preset",
                        .help = "Starting values: default (from-scratch CvT-13), study (the study's Trainer protocol), "
                                "cpu (a reduced run for a CPU); explicit options override them (default: default)",
                        .member = &O::recipe});
  // ---- model
  f(Option<std::string>{"model", "--model", "Architecture preset (cvt-13, cvt-tiny, vit-b16, ...)", &O::model});
  f(Option<std::string>{"config", "--config", "A Hugging Face config.json instead of --model", &O::config});
  f(Option<std::string>{"weights", "--weights",
                        "Initial weights: model.safetensors or a checkpoint directory (omit to train from scratch)",
                        &O::weights});
  f(Option<bool>{"keep_imagenet_head", "--keep-imagenet-head",
                 "Keep the checkpoint's classifier (the study's mistake; for comparison)", &O::keep_imagenet_head,
                 [](const bool& keep, const O& o) -> std::string {
                   return keep && o.weights.empty() ? "needs --weights (a checkpoint whose head to keep)" : "";
                 }});
  f(Option<Parsed<DropPath>>{"drop_path", "--drop-path",
                             "CvT: the last stage's drop-path rate in [0, 1) (default: the model config's)",
                             &O::drop_path});
  f(Option<int>{"channels", "--channels", "Input planes: 3 (RGB) or 1 (luma, for grayscale images)", &O::channels,
                [](const int& v, const O& o) -> std::string {
                  if (v != 1 && v != 3) return "must be 1 or 3";
                  return v == 1 && !o.weights.empty() ? "1 needs a model trained from scratch (not --weights)" : "";
                }});
  // ---- data
  f(Option<std::string>{"data", "--data", "ROOT with Training/ and Testing/ (or ROOT/<class>/)", &O::data,
                        [](const std::string& v, const O& o) -> std::string {
                          return v.empty() && !o.synthetic ? "must name the data set's ROOT (or give --synthetic)" : "";
                        }});
  f(Option<bool>{"synthetic", "--synthetic", "Use a generated 4-class set (not MRI) in OUT/synthetic-data",
                 &O::synthetic});
  f(Option<double>{"val_fraction", "--val-fraction", "Stratified validation share of Training", &O::val_fraction,
                   [](const double& v, const O&) -> std::string { return v > 0 && v < 1 ? "" : "must be in (0, 1)"; }});
  f(Option<Parsed<SplitKind>>{"split", "--split",
                              "Validation split: grouped (near-copies of one picture stay on one side) or random",
                              &O::split});
  f(Option<bool>{"crop_foreground", "--crop-foreground",
                 "Crop each image to the square around its foreground (the head) first, in training and "
                 "evaluation (tessera_crop_foreground in preprocessor_config.json)", &O::crop_foreground});
  f(Option<bool>{"equalize", "--equalize",
                 "Equalise each image's histogram (after the crop), in training and evaluation "
                 "(tessera_equalize in preprocessor_config.json)", &O::equalize});
  f(Option<bool>{"per_image_norm", "--per-image-norm",
                 "Standardise each image by its own mean and std (scanner-independent intensities)",
                 &O::per_image_norm});
  f(Option<int>{"image_size", "--image-size", "Input resolution", &O::image_size,
                [](const int& v, const O&) -> std::string { return v >= 16 && v <= 1024 ? "" : "must be in [16, 1024]"; }});
  f(Option<bool>{"static_augment", "--static-augment",
                 "One fixed augmented copy per image, made once (the study's mistake; for comparison)",
                 &O::static_augment});
  f(Option<double>{"rotation", "--rotation", "Augmentation: random rotation within ± degrees", &O::rotation,
                   non_negative<double>});
  f(Option<double>{"crop_scale_min", "--crop-scale-min",
                   "Augmentation: the random resized crop's smallest share of the image area", &O::crop_scale_min,
                   [](const double& v, const O&) -> std::string { return v > 0 && v <= 1 ? "" : "must be in (0, 1]"; }});
  f(Option<double>{"brightness", "--brightness", "Augmentation: brightness jitter", &O::brightness, non_negative<double>});
  f(Option<double>{"contrast", "--contrast", "Augmentation: contrast jitter", &O::contrast, non_negative<double>});
  f(Option<double>{"p_vflip", "--vflip", "Augmentation: vertical flip probability", &O::p_vflip, in_0_1});
  f(Option<double>{"gamma", "--gamma", "Augmentation: gamma with log(gamma) uniform in ± this, on half the images",
                   &O::gamma, [](const double& v, const O&) -> std::string { return v >= 0 && v <= 2 ? "" : "must be in [0, 2]"; }});
  f(Option<double>{"blur", "--blur", "Augmentation: probability of a Gaussian blur (sigma 0.1-1.2 px)", &O::blur,
                   in_0_1});
  f(Option<double>{"noise", "--noise", "Augmentation: Gaussian noise of this std (share of 255), on half the images",
                   &O::noise, [](const double& v, const O&) -> std::string { return v >= 0 && v <= 0.5 ? "" : "must be in [0, 0.5]"; }});
  f(Option<double>{"erase", "--erase", "Augmentation: probability of random erasing (2-33 % of the area)", &O::erase,
                   in_0_1});
  f(Option<double>{"mixup", "--mixup", "Mixup's Beta(a, a) parameter (0: off)", &O::mixup, finite_non_negative});
  f(Option<double>{"cutmix", "--cutmix", "CutMix's Beta(a, a) parameter (0: off; with --mixup: either, half the batches)",
                   &O::cutmix, finite_non_negative});
  f(Option<double>{"mixstyle", "--mixstyle",
                   "CvT: share of batches whose feature statistics after stages 1 and 2 are mixed between "
                   "samples (MixStyle; 0: off)", &O::mixstyle, in_0_1});
  f(Option<double>{"mixstyle_alpha", "--mixstyle-alpha", "MixStyle's Beta(a, a) parameter for each sample's weight",
                   &O::mixstyle_alpha, finite_positive});
  f(Option<bool>{.name = "study_pipeline", .member = &O::study_pipeline});  // set by the study recipe only
  f(Option<int64_t>{"max_train_samples", "--max-train-samples", "Train on a stratified subset",
                    &O::max_train_samples, non_negative<int64_t>});
  f(Option<int>{.name = "workers", .flags = "--workers", .help = "Loader threads (0: all cores)",
                .member = &O::workers, .problem = non_negative<int>, .resume_may_change = true});
  f(Option<int64_t>{.name = "max_image_pixels", .flags = "--max-image-pixels",
                    .help = "Skip (with a warning) images whose header declares more pixels than this, "
                            "before decoding them (default: 89478485, Pillow's decompression-bomb limit)",
                    .member = &O::max_image_pixels, .problem = at_least_1<int64_t>, .resume_may_change = true});
  // ---- optimisation
  f(Option<int64_t>{"epochs", "--epochs", "Epochs", &O::epochs, at_least_1<int64_t>});
  f(Option<int64_t>{"batch_size", "--batch-size", "Images per optimizer step", &O::batch_size, at_least_1<int64_t>});
  f(Option<int64_t>{.name = "eval_batch_size", .member = &O::eval_batch_size, .problem = at_least_1<int64_t>});
  f(Option<double>{"lr", "--lr", "Peak learning rate", &O::lr, finite_positive});
  f(Option<double>{"weight_decay", "--weight-decay", "AdamW weight decay (not on biases and LayerNorms)",
                   &O::weight_decay, finite_non_negative});
  f(Option<double>{"label_smoothing", "--label-smoothing", "Cross-entropy label smoothing", &O::label_smoothing,
                   [](const double& v, const O&) -> std::string { return v >= 0 && v < 1 ? "" : "must be in [0, 1)"; }});
  f(Option<double>{"clip_grad", "--clip-grad", "Global gradient-norm clipping (0: off)", &O::clip_grad,
                   [](const double& v, const O&) -> std::string { return v >= 0 ? "" : "must be >= 0 (0: no clipping)"; }});
  f(Option<bool>{"balanced_loss", "--balanced-loss",
                 "Weight the loss by inverse class frequency (each class counts equally)", &O::balanced_loss});
  f(Option<double>{"ema", "--ema", "Decay of the weights' moving average, evaluated beside the raw weights (0: off)",
                   &O::ema, [](const double& v, const O&) -> std::string { return v >= 0 && v < 1 ? "" : "must be in [0, 1)"; }});
  f(Option<bool>{"tta", "--tta", "Evaluate on each image and its mirror image, averaging the probabilities",
                 &O::tta});
  f(Option<Parsed<LrSchedule::Kind>>{"schedule", "--schedule", "constant, linear or cosine", &O::schedule});
  f(Option<Parsed<Warmup>>{"warmup", "--warmup", "Warmup: steps (500), a fraction (0.05) or epochs (2ep)", &O::warmup});
  f(Option<int64_t>{"seed", "--seed", "Seed of the split, init, order, augmentation, drop path", &O::seed,
                    non_negative<int64_t>});
  // ---- running
  f(Option<Parsed<DeviceChoice>>{.name = "device", .flags = "--device",
                                 .help = "cuda or cpu (default: cuda when present and verified)",
                                 .member = &O::device, .resume_may_change = true});
  f(Option<Parsed<Precision>>{"precision", "--precision", "fp32 or bf16", &O::precision});
  f(Option<std::string>{"out", "--out", "Run directory (checkpoints, metrics.jsonl, report.html)", &O::out,
                        [](const std::string& v, const O&) -> std::string { return v.empty() ? "must name a directory" : ""; }});
  f(Option<std::string>{.name = "resume", .flags = "--resume",
                        .help = "Continue the run in this directory from its last checkpoint", .member = &O::resume,
                        .resume_may_change = true, .in_run_json = false});
  f(Option<bool>{.name = "allow_data_change", .flags = "--allow-data-change",
                 .help = "With --resume: continue although the data set changed since the last checkpoint",
                 .member = &O::allow_data_change, .resume_may_change = true, .in_run_json = false});
  f(Option<int64_t>{"log_every", "--log-every", "Steps between metrics.jsonl step lines", &O::log_every,
                    at_least_1<int64_t>});
  f(Option<bool>{.name = "progress", .flags = "!--no-progress", .help = "No progress bar",
                 .member = &O::progress, .resume_may_change = true, .in_run_json = false});
  f(Option<std::string>{.name = "halt_in_checkpoint", .flags = "--halt-in-checkpoint",
                        .help = "Testing aid: EPOCH:STAGE, exit abruptly inside that epoch's checkpoint write "
                                "(STAGE: files, after the weights and moments; links, after the folder is in place)",
                        .member = &O::halt_in_checkpoint, .resume_may_change = true, .in_run_json = false,
                        .hidden = true});
  f(Option<int64_t>{.name = "halt_after_steps", .flags = "--halt-after-steps",
                    .help = "Testing aid: exit abruptly after N steps, as if killed", .member = &O::halt_after_steps,
                    .problem = non_negative<int64_t>, .resume_may_change = true, .in_run_json = false,
                    .hidden = true});
}

}  // namespace tessera::train
