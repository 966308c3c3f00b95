#include "train/trainer.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <iostream>
#include <sstream>

#include "data/audit.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/core/cuda.h"
#include "engine/core/fileio.h"
#include "engine/ema.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "train/schedule.h"
#include "models/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/mixing.h"
#include "train/progress.h"
#include "train/report.h"
#include "train/synthetic.h"

namespace tessera::train {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- the device

std::string models_on_cuda_caveat() {
  return kModelsOnCuda ? "" : "the CvT/ViT CUDA path has not been verified on a GPU: its kernels are compiled, not run";
}

Device resolve_device(DeviceChoice choice, std::ostream& log) {
  const bool gpu = cuda::available();
  if (choice == DeviceChoice::CUDA) {
    if (!gpu) throw std::runtime_error("--device cuda: " + cuda::status());
    if (!kModelsOnCuda) log << "warning: " << models_on_cuda_caveat() << "\n";
    return Device::CUDA;
  }
  if (choice == DeviceChoice::Auto && gpu) {
    if (kModelsOnCuda) return Device::CUDA;
    log << "note: a GPU is present, but running on the CPU (--device cuda to try it): " << models_on_cuda_caveat() << "\n";
  }
  return Device::CPU;
}

namespace {

// ---------------------------------------------------------------- the study's protocol
// The study's Hugging Face Trainer protocol (recipe "study", train/trainer.h) has quirks this trainer keeps
// on purpose, so that its results can be reproduced and compared. They live here, named, and nowhere
// else in the loop:
//   weight decay    the Trainer's grouping: no decay on biases and LayerNorm weights, decay on everything
//                   else (BatchNorm weights, cls token and classifier included). Every recipe uses it.
//   best epoch      by validation accuracy, strict >: a tie keeps the earlier epoch (the Trainer's
//                   metric_for_best_model with greater_is_better).
//   schedule        linear decay without warmup: TrainOptions' defaults, which the study recipe keeps.
//   pre-resize      study_pipeline: every image resized to image_size² first, augmented, then the model's
//                   processor on top (for CvT another resize to 256 and a 224 crop) — also at evaluation.
//   static augment  --static-augment: one augmented copy of each image, made once, beside the originals.
//   ImageNet head   --keep-imagenet-head: the checkpoint's 1000-class head trained as it is (build_model).
namespace study {

std::vector<ParamGroup> param_groups(const models::Model& model, double weight_decay) {
  return trainer_param_groups(model.parameters(), weight_decay);
}

bool is_better(double val_accuracy, double best_so_far) { return val_accuracy > best_so_far; }

// The resize before everything else (pre-resize), or none.
std::function<void(Image&, int64_t)> pre_resize(const TrainOptions& o) {
  if (!o.study_pipeline) return {};
  const int s = o.image_size;
  return [s](Image& im, int64_t) { im = resize(im, s, s, Filter::Bilinear); };
}

// Static augmentation: the samples twice; index i >= n is the i-n-th image's one augmented copy, made after
// `prepare` (what comes before augmentation).
void make_static(std::vector<Sample>& samples, LoaderConfig& cfg, const AugmentConfig& aug, const TrainOptions& o,
                 const std::function<void(Image&, int64_t)>& prepare) {
  const std::vector<Sample> originals = samples;
  const int64_t n = int64_t(originals.size());
  samples.insert(samples.end(), originals.begin(), originals.end());
  const uint64_t seed = o.seed;
  cfg.prepare = [=](Image& im, int64_t i) {
    if (prepare) prepare(im, i);
    if (i >= n) im = augment(im, aug, seed, uint64_t(i - n));
  };
}

}  // namespace study

// ---------------------------------------------------------------- pieces of a run

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// The data a run uses, after the split, with the data audit's "novel" subsets: the validation images with
// no near-copy (a member of their near-duplicate group) in the train split, and the Testing images with
// none in Training. Both come from the data itself, at every start, so they always describe this data.
struct RunData {
  std::string root;
  std::vector<std::string> classes;
  std::vector<Sample> train, val, test;  // test empty for a flat folder
  std::set<std::string> val_novel, test_novel;  // paths relative to root
  std::map<std::string, std::string> fingerprints;  // by split folder ("Training", "Testing"; "" when flat)
};

RunData load_data(const TrainOptions& o) {
  RunData d;
  d.root = o.data;
  DatasetSplit all;
  if (detect_layout(o.data) == Layout::Split) {
    SplitLayout s = load_split_layout(o.data);
    d.fingerprints["Training"] = fingerprint(s.train, (fs::path(o.data) / "Training").string());
    d.fingerprints["Testing"] = fingerprint(s.test, (fs::path(o.data) / "Testing").string());
    all = std::move(s.train);
    d.test = std::move(s.test.samples);
  } else {
    all = scan_folder(o.data);
    d.fingerprints[""] = fingerprint(all, o.data);
  }
  d.classes = all.classes;
  const AuditReport audit = audit_dataset(o.data);
  std::map<std::string, int64_t> group_of;  // relative path -> near-duplicate group
  for (const AuditImage& im : audit.images) group_of[im.path] = im.near_group;
  for (int i : audit.novel) d.test_novel.insert(audit.images[size_t(i)].path);
  // An unreadable file has no audit entry: its own group (the loader skips it with a warning later).
  std::vector<int64_t> groups(all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    auto it = group_of.find(relative_to(all.samples[i].path, d.root));
    groups[i] = it != group_of.end() ? it->second : -1 - int64_t(i);
  }
  TrainVal tv = *o.split == SplitKind::Grouped ? grouped_split(all, groups, o.val_fraction, o.seed)
                                               : stratified_split(all, o.val_fraction, o.seed);
  d.train = std::move(tv.train.samples);
  d.val = std::move(tv.val.samples);
  if (o.max_train_samples > 0 && o.max_train_samples < int64_t(d.train.size())) {
    DatasetSplit part{d.classes, d.train};
    d.train = stratified_split(part, double(o.max_train_samples) / double(part.size()), o.seed + 1).val.samples;
  }
  std::set<int64_t> train_groups;
  for (const Sample& s : d.train) {
    auto it = group_of.find(relative_to(s.path, d.root));
    if (it != group_of.end()) train_groups.insert(it->second);
  }
  for (const Sample& s : d.val) {
    const std::string rel = relative_to(s.path, d.root);
    auto it = group_of.find(rel);
    if (it == group_of.end() || !train_groups.count(it->second)) d.val_novel.insert(rel);
  }
  return d;
}

std::vector<int64_t> counts_of(const std::vector<Sample>& samples, size_t classes) {
  std::vector<int64_t> c(classes, 0);
  for (const auto& s : samples) ++c[size_t(s.label)];
  return c;
}

// The processor every image passes through last: the model's own for evaluation; for training after
// the random resized crop (which already gives image_size²) only the normalisation is left, so a squash
// at the same size (Pillow's identity) with the model's mean and std.
// The input planes follow the model (1: luma) and --per-image-norm replaces the fixed mean and std.
ProcessorConfig eval_processor(const models::ModelConfig& c, const TrainOptions& o) {
  ProcessorConfig p = std::holds_alternative<models::VitConfig>(c) ? ProcessorConfig::vit(o.image_size)
                                                                  : ProcessorConfig::cvt(o.image_size);
  p.channels = int(models::num_channels(c));
  p.per_image_standardize = o.per_image_norm;
  p.crop_foreground = o.crop_foreground;
  p.equalize = o.equalize;
  return p;
}

std::unique_ptr<models::Model> build_model(const TrainOptions& o, const std::vector<std::string>& classes) {
  models::ModelConfig config;
  std::string weights_file = o.weights;
  if (!o.weights.empty() && fs::is_directory(o.weights)) {
    verify_checkpoint(o.weights);  // a training checkpoint's files are checked before they are trusted
    weights_file = (fs::path(o.weights) / "model.safetensors").string();
  }
  if (!o.config.empty()) config = models::load_config(o.config);
  else if (!o.weights.empty() && fs::is_directory(o.weights)) config = models::load_config((fs::path(o.weights) / "config.json").string());
  else config = models::preset_config(o.model);
  if (auto* cvt = std::get_if<models::CvtConfig>(&config); cvt && (*o.drop_path).rate) cvt->drop_path_rate.back() = *(*o.drop_path).rate;
  if (auto* vit = std::get_if<models::VitConfig>(&config)) vit->image_size = o.image_size;
  if (o.weights.empty()) std::visit([&](auto& m) { m.num_channels = o.channels; }, config);

  if (o.weights.empty()) {
    models::set_labels(config, classes);
    return models::make_model(config, o.seed);
  }
  models::LoadOptions load;
  if (o.keep_imagenet_head) {
    // The checkpoint's head as it is: its row count decides the label count; the data's classes are
    // labels 0..C-1 inside it (the study's mistake).
    SafetensorsFile w(weights_file);
    if (w.contains("classifier.weight")) {
      // The data's classes name their rows, so that evaluation (tessera eval) finds them by name.
      std::vector<std::string> labels = models::default_labels(w.info("classifier.weight").shape.at(0));
      for (size_t i = 0; i < classes.size() && i < labels.size(); ++i) labels[i] = classes[i];
      models::set_labels(config, labels);
    }
  } else {
    load.num_classes = int64_t(classes.size());
    load.head_seed = o.seed;
  }
  auto model = models::load_model(config, weights_file, load);
  if (!o.keep_imagenet_head) {
    models::ModelConfig named = model->config();
    models::set_labels(named, classes);
    // Rebuild with the class names in id2label (what config.json of every checkpoint then carries).
    auto renamed = models::make_model(named);
    renamed->load_state_dict(model->state_dict(), weights_file);
    return renamed;
  }
  return model;
}

// A loader batch (pinned host memory) on the training device. On CUDA the copies are queued without
// waiting (a synchronous copy would make the host wait for the previous step's kernels before queuing this
// step's); the caller records an event after them and waits on it before the loader may reuse the buffers.
std::pair<Tensor, Tensor> upload(const Batch& batch, Device device) {
  if (device == Device::CPU) return {batch.images, batch.labels};
  Tensor images = Tensor::empty(batch.images.shape(), batch.images.dtype(), device);
  Tensor labels = Tensor::empty(batch.labels.shape(), batch.labels.dtype(), device);
  cuda::copy_host_to_device(images.raw_data(), batch.images.raw_data(), batch.images.nbytes(), /*async=*/true);
  cuda::copy_host_to_device(labels.raw_data(), batch.labels.raw_data(), batch.labels.nbytes(), /*async=*/true);
  return {images, labels};
}

// metrics.jsonl: one line per event, flushed as written.
class MetricsLog {
 public:
  MetricsLog(const std::string& path, int64_t keep_bytes) : path_(path) {
    std::error_code ec;
    if (keep_bytes >= 0 && fs::exists(path_)) fs::resize_file(path_, uint64_t(keep_bytes), ec);
    out_.open(path_, std::ios::app);
    if (!out_) throw FileError(path_ + ": cannot open for appending");
  }
  void write(const json& j) {
    out_ << dump_json(j) << "\n";
    out_.flush();
    if (!out_) throw FileError(path_ + ": cannot write");
  }
  int64_t bytes() { return int64_t(out_.tellp()); }

 private:
  std::string path_;
  std::ofstream out_;
};

// The run directory's lock: an advisory flock on OUT/.lock held for the life of the process (the kernel drops
// it when the process ends, however it ends), so two runs — or two resumes — never write into one
// directory at once. The file itself stays; only the lock on it matters.
class RunLock {
 public:
  RunLock() = default;
  explicit RunLock(const std::string& dir) {
    const std::string path = (fs::path(dir) / ".lock").string();
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw FileError(path + ": cannot open the run's lock file");
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(fd_);
      fd_ = -1;
      throw std::runtime_error("train: " + dir + " is in use by another tessera run (it holds " + path +
                               "); wait for it to end or choose another --out");
    }
  }
  RunLock(RunLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  RunLock& operator=(RunLock&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~RunLock() {
    if (fd_ >= 0) ::close(fd_);
  }

 private:
  int fd_ = -1;
};

// SIGINT / SIGTERM: the handler only records the signal and restores the default action of both, so the
// loop stops after the step in progress (train_epoch checks between steps) and a second signal, either one,
// ends the process at once.
std::atomic<int> pending_signal{0};
constexpr int kSignals[2] = {SIGINT, SIGTERM};

extern "C" void record_signal(int sig) {
  pending_signal.store(sig);
  for (int s : kSignals) ::signal(s, SIG_DFL);
}

// Installs the handler for a run's life and puts back what was there before.
class SignalGuard {
 public:
  SignalGuard() {
    pending_signal.store(0);
    struct sigaction sa {};
    sa.sa_handler = record_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 2; ++i) ::sigaction(kSignals[i], &sa, &previous_[i]);
  }
  ~SignalGuard() {
    for (int i = 0; i < 2; ++i) ::sigaction(kSignals[i], &previous_[i], nullptr);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;

 private:
  struct sigaction previous_[2];
};

// Everything one run holds between its epochs.
struct Run {
  RunLock lock;
  TrainOptions o;
  Device device = Device::CPU;
  DType compute = DType::f32;  // bf16: activations in bf16, fp32 master weights (Model::set_compute_dtype)
  Clock::time_point started;
  RunData data;
  std::unique_ptr<models::Model> model;
  bool has_batch_norm = false;  // CvT
  ProcessorConfig eval_processor;
  std::function<void(Image&, int64_t)> eval_prepare;  // evaluation images through training's pre-resize
  std::unique_ptr<DataLoader> loader;
  std::unique_ptr<AdamW> optimizer;
  LrSchedule schedule;
  Generator gen;  // dropout / drop path
  TrainerState state;
  std::unique_ptr<MetricsLog> metrics;
  MixConfig mix;                            // mixup / CutMix (off unless an alpha is given)
  std::unique_ptr<WeightEma> ema;           // --ema: the weights' moving average
  std::unique_ptr<models::Model> ema_model;  // the model the average is evaluated and saved in
  int64_t val_skipped = 0;                   // unreadable validation files (the last evaluation's count)
};

// The checkpoint a resumed run continues from, and its state.
struct Resumed {
  std::string checkpoint;
  TrainerState state;
};

// The options a call runs with: its own, or for --resume the run's (only where and how it runs may
// change); `resumed` then names the last checkpoint, whose files every part of the resume reads.
TrainOptions run_options(const TrainOptions& given, std::optional<Resumed>& resumed) {
  if (given.resume.empty()) return given;
  const std::string checkpoint = last_checkpoint(given.resume);
  const std::string run_json = (fs::path(given.resume) / "run.json").string();
  TrainOptions o = resume_options(options_from_json(read_json(run_json).at("options"), run_json), given);
  resumed = Resumed{checkpoint, load_trainer_state(checkpoint)};
  return o;
}

// The training loader: augmentation (random, or the study's static copies), the pre-resize, and the
// processor's normalisation last.
std::unique_ptr<DataLoader> make_train_loader(const Run& r, std::ostream& log) {
  const TrainOptions& o = r.o;
  LoaderConfig cfg;
  AugmentConfig aug;
  aug.rotation_degrees = o.rotation, aug.crop_scale_min = o.crop_scale_min;
  aug.brightness = o.brightness, aug.contrast = o.contrast, aug.p_vflip = o.p_vflip;
  // The scanner-like changes each hit half the images (blur and erasing: their given share), so every
  // epoch still shows the model plain images too.
  aug.p_gamma = o.gamma > 0 ? 0.5 : 0, aug.gamma_log_range = o.gamma;
  aug.p_blur = o.blur, aug.blur_sigma_min = 0.1, aug.blur_sigma_max = 1.2;
  aug.p_noise = o.noise > 0 ? 0.5 : 0, aug.noise_std = o.noise;
  aug.p_erase = o.erase;
  aug.out_width = aug.out_height = o.image_size;
  cfg.processor = r.eval_processor;
  // Without the pre-resize the crop already has the output size: the processor only normalises.
  if (!o.study_pipeline) cfg.processor.mode = ProcessorConfig::Resize::Squash;
  // What comes before augmentation, cached with the decoded image, in evaluation's order: the study's
  // pre-resize, then the crop to the head and the equalisation (which evaluation's processor does first);
  // the processor after augmentation only normalises.
  std::function<void(Image&, int64_t)> prepare = study::pre_resize(o);
  if (cfg.processor.crop_foreground || cfg.processor.equalize)
    prepare = [pre = prepare, crop = cfg.processor.crop_foreground, flatten = cfg.processor.equalize](Image& im,
                                                                                                      int64_t i) {
      if (pre) pre(im, i);
      if (crop) im = crop_to_foreground(im);
      if (flatten) im = equalize(im);
    };
  cfg.processor.crop_foreground = cfg.processor.equalize = false;
  std::vector<Sample> samples = r.data.train;
  if (o.static_augment) {
    study::make_static(samples, cfg, aug, o, prepare);
  } else {
    cfg.augment = aug;
    cfg.prepare = prepare;
  }
  cfg.batch_size = o.batch_size;
  // A last batch of one image cannot train CvT's BatchNorm (no variance; torch refuses it too): drop it.
  if (r.has_batch_norm && int64_t(samples.size()) % o.batch_size == 1) {
    cfg.drop_last = true;
    log << "note: dropping each epoch's last batch of 1 image (batch norm needs 2)\n";
  }
  cfg.shuffle = true;
  cfg.seed = o.seed;
  cfg.num_workers = o.workers;
  cfg.image_limits.max_pixels = o.max_image_pixels;
  cfg.cache_decoded = true;  // the set is small (≈0.6 GB decoded); decoding once saves a core-second per 400 images
  return std::make_unique<DataLoader>(std::move(samples), r.model->num_labels(), cfg);
}

void write_run_json(const Run& r, const std::string& command_line) {
  const TrainOptions& o = r.o;
  const size_t C = r.data.classes.size();
  json run = {{"tessera_version", TESSERA_VERSION}, {"command", command_line}, {"started", utc_now()},
              {"model", o.config.empty() ? o.model : o.config}, {"device", device_name(r.device)},
              {"precision", o.precision}, {"image_size", o.image_size}, {"classes", r.data.classes},
              {"parameters", r.model->num_parameters()},
              {"data", {{"root", r.data.root}, {"synthetic", o.synthetic},
                        {"counts", {{"train", counts_of(r.data.train, C)}, {"validation", counts_of(r.data.val, C)},
                                    {"Testing", counts_of(r.data.test, C)}}}}},
              {"options", options_to_json(o)}};
  write_file_atomic((fs::path(o.out) / "run.json").string(), dump_json(run, 2) + "\n");
}

// What a resume reads beyond the checkpoint's own files (SHA256SUMS covers those) must agree with them:
// trainer_state.json's epoch with the folder's name and the step count it implies, the optimizer's step
// counters, metrics.jsonl (its length at that epoch and that epoch's line), and the data, whose
// fingerprints must be those the run was given unless --allow-data-change. Each mismatch is one line
// naming the file; the data's ends with what to do.
void check_resumed_state(Run& r, const fs::path& checkpoint, int64_t steps_per_epoch, std::ostream& log) {
  const TrainerState& s = r.state;
  const std::string state_file = (checkpoint / "trainer_state.json").string();
  const std::string folder = fs::canonical(checkpoint).filename().string();
  if (folder != checkpoint_name(s.epoch))
    throw std::runtime_error(state_file + ": says epoch " + std::to_string(s.epoch) + ", but it lies in " + folder);
  if (s.global_step != s.epoch * steps_per_epoch)
    throw std::runtime_error(state_file + ": says step " + std::to_string(s.global_step) + " after epoch " +
                             std::to_string(s.epoch) + ", but epochs have " + std::to_string(steps_per_epoch) +
                             " steps here (the run's data or options differ from the checkpoint's)");
  int64_t optimizer_steps = 0;
  for (const auto& p : r.optimizer->states()) optimizer_steps = std::max(optimizer_steps, p.step);
  if (optimizer_steps != s.global_step)
    throw std::runtime_error((checkpoint / "optimizer.safetensors").string() + ": its parameters took " +
                             std::to_string(optimizer_steps) + " steps, but " + state_file + " says " +
                             std::to_string(s.global_step));
  const std::string metrics = (fs::path(r.o.out) / "metrics.jsonl").string();
  std::error_code ec;
  const auto size = fs::file_size(metrics, ec);
  if (ec || int64_t(size) < s.metrics_bytes)
    throw std::runtime_error(metrics + ": " + (ec ? "missing" : "shorter (" + std::to_string(size) + " bytes)") +
                             " than the " + std::to_string(s.metrics_bytes) + " bytes it had when " + state_file +
                             " was written");
  const std::string text = read_file(metrics).substr(0, size_t(s.metrics_bytes));
  const size_t start = text.empty() ? 0 : text.rfind('\n', text.size() - 2) + 1;  // npos + 1 = 0
  json last;
  try {
    last = json::parse(text.substr(start));
  } catch (const json::exception&) {
  }
  if (last != s.epoch_metrics)
    throw std::runtime_error(metrics + ": its line at byte " + std::to_string(start) + " is not epoch " +
                             std::to_string(s.epoch) + "'s record in " + state_file + " (the file was changed)");
  for (const auto& [split, now] : r.data.fingerprints) {
    const auto then = s.data_fingerprints.find(split);
    if (then != s.data_fingerprints.end() && then->second == now) continue;
    const std::string folder_name = (fs::path(r.o.data) / split).string();
    const std::string what = folder_name + " changed since the run's last checkpoint (data fingerprint " +
                             (then == s.data_fingerprints.end() ? "none" : then->second.substr(0, 12) + "…") +
                             " then, " + now.substr(0, 12) + "… now)";
    if (!r.o.allow_data_change)
      throw std::runtime_error("train --resume: " + what + ": the split, the validation and its metrics would "
                               "no longer be the run's; continue anyway with --allow-data-change");
    log << "warning: " << what << "; continuing as --allow-data-change asks\n";
  }
}

// Setup: the options, the device, the data, the model, the loader, the optimizer and schedule, and for
// --resume the last checkpoint's weights, moments and state; a new run records run.json.
void setup(Run& r, const TrainOptions& given, std::ostream& log, const std::string& command_line) {
  std::optional<Resumed> resumed;
  r.o = run_options(given, resumed);
  TrainOptions& o = r.o;
  validate(o);
  r.device = resolve_device(*o.device, log);
  r.compute = *o.precision == Precision::BF16 ? DType::bf16 : DType::f32;

  // A new run never starts over an old one: its checkpoints and links would mix with the new run's.
  if (!resumed && (fs::exists(fs::path(o.out) / "last") || fs::exists(fs::path(o.out) / "run.json")))
    throw std::runtime_error("train: " + o.out + " already holds a run; continue it with --resume " + o.out +
                             ", or choose another --out (or remove it)");
  fs::create_directories(o.out);
  r.lock = RunLock(o.out);
  // With the lock held no other process writes here: temporaries are a killed run's leftovers.
  for (const std::string& name : remove_temporaries(o.out))
    log << "note: removed " << (fs::path(o.out) / name).string() << ", left half-written by a run that was killed\n";
  if (o.synthetic) {
    if (o.data.empty()) o.data = (fs::path(o.out) / "synthetic-data").string();
    make_synthetic_dataset(o.data, o.seed);
  }
  r.data = load_data(o);
  r.model = build_model(o, r.data.classes);
  r.model->to(r.device);  // before the optimizer: its moments live where the parameters do
  r.model->set_compute_dtype(r.compute);
  r.has_batch_norm = std::holds_alternative<models::CvtConfig>(r.model->config());
  if (o.mixstyle > 0 && !r.model->supports_style_mix())
    throw std::invalid_argument("--mixstyle: " + std::string(r.model->arch_name()) +
                                " has no stages to mix the statistics of (CvT models only)");
  r.eval_processor = eval_processor(r.model->config(), o);
  r.eval_prepare = study::pre_resize(o);
  r.loader = make_train_loader(r, log);

  AdamWOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;
  r.optimizer = std::make_unique<AdamW>(study::param_groups(*r.model, o.weight_decay), ao);
  const int64_t steps_per_epoch = r.loader->batches_per_epoch();
  validate_schedule(o, steps_per_epoch, int64_t(r.data.train.size()));
  r.schedule.kind = *o.schedule;
  r.schedule.base_lr = o.lr;
  r.schedule.total_steps = steps_per_epoch * o.epochs;
  r.schedule.warmup_steps = (*o.warmup).steps(steps_per_epoch, r.schedule.total_steps);
  r.schedule.validate();
  r.gen = Generator(o.seed ^ 0x5EED0D120FULL);  // apart from the init stream
  r.mix.mixup_alpha = o.mixup, r.mix.cutmix_alpha = o.cutmix;
  validate(r.mix);
  if (o.ema > 0) {
    r.ema = std::make_unique<WeightEma>(r.model->state_dict(), o.ema);
    r.ema_model = models::make_model(r.model->config());
    r.ema_model->to(r.device);
    r.ema_model->set_compute_dtype(r.compute);
  }

  if (resumed) {
    const fs::path checkpoint = resumed->checkpoint;
    // With --ema the checkpoint's model.safetensors is the average (what the run selects and delivers) and
    // the weights being trained are beside it (train/checkpoint.h).
    r.model->load_safetensors((checkpoint / (r.ema ? "raw_model.safetensors" : "model.safetensors")).string());
    if (r.ema) r.ema->load((checkpoint / "model.safetensors").string());
    load_optimizer(*r.optimizer, (checkpoint / "optimizer.safetensors").string());
    r.state = resumed->state;
    check_resumed_state(r, checkpoint, steps_per_epoch, log);
    r.gen.set_state(r.state.rng_seed, r.state.rng_offset);
    log << "resuming " << o.out << " after epoch " << r.state.epoch << " (step " << r.state.global_step << ")\n";
  } else {
    write_run_json(r, command_line);
  }
  r.state.data_fingerprints = r.data.fingerprints;  // every checkpoint records the data it was trained on
  r.metrics = std::make_unique<MetricsLog>((fs::path(o.out) / "metrics.jsonl").string(), resumed ? r.state.metrics_bytes : 0);

  log << "train: " << (o.config.empty() ? o.model : o.config) << " (" << r.model->num_parameters() << " parameters"
      << (o.weights.empty() ? ", from scratch" : ", from " + o.weights) << ") on " << r.data.train.size()
      << " images (" << r.data.val.size() << " validation, " << r.data.test.size() << " Testing), "
      << r.data.classes.size() << " classes, " << o.image_size << "px, " << o.epochs << " epochs × "
      << steps_per_epoch << " steps of " << o.batch_size << ", recipe " << o.recipe << ", device "
      << device_name(r.device) << ", out " << o.out << "\n";
}

// `alter` (optional) changes each image after the pre-resize, before the processor; such a diagnostic pass
// skips --tta's mirror images (half the cost, and the check is about brightness, not mirroring).
EvalResult evaluate_split(const Run& r, models::Model& model, const std::vector<Sample>& samples,
                          const std::set<std::string>* novel, std::function<void(Image&)> alter = {}) {
  EvalOptions e;
  e.batch_size = r.o.eval_batch_size;
  e.workers = r.o.workers;
  e.image_limits.max_pixels = r.o.max_image_pixels;
  e.device = r.device;
  e.novel = novel;
  e.root = r.data.root;
  e.prepare = r.eval_prepare;
  if (alter)
    e.prepare = [pre = r.eval_prepare, alter](Image& im, int64_t i) {
      if (pre) pre(im, i);
      alter(im);
    };
  e.tta_hflip = r.o.tta && !alter;
  return evaluate(model, samples, r.data.classes, r.eval_processor, e);
}

// The scanner check: validation again, every image brightened by this factor (PIL's ImageEnhance
// arithmetic, clipped at 255). No split of Training can show the source shift of Testing, where most glioma
// and pituitary images come from another scanner; one known difference is brightness (Training's glioma
// images average about 35/255, the other source's about 62/255), and x1.75 turns one into the other. A
// model that reads brightness as class evidence loses accuracy here; one that does not, does not. The
// factor comes from that description of the data, never from a result on Testing.
constexpr double kScannerCheckBrightness = 1.75;

struct EpochTotals {
  double mean_loss = 0, accuracy = 0;
  double loader_wait_s = 0;  // time the step stood waiting for the loader's next batch (0: it kept ahead)
};

// A diverged run stops with an error (exit 1) instead of checkpointing NaN weights or calling them best.
// The epoch's loss sum carries a NaN or inf from any step into every later read-back, so checking it at
// each read-back (every log line or bar update, and the epoch's end) catches a divergence within those
// steps without making the step wait for the device.
void check_finite(double loss_sum, double grad_norm, int64_t epoch, int64_t step) {
  if (std::isfinite(loss_sum) && std::isfinite(grad_norm)) return;
  throw std::runtime_error("train: the run diverged by step " + std::to_string(step) + " (epoch " +
                           std::to_string(epoch) + "): " + (std::isfinite(loss_sum) ? "gradient norm" : "loss") +
                           " is " + std::to_string(std::isfinite(loss_sum) ? grad_norm : loss_sum) +
                           "; no checkpoint was written for this epoch (try a lower --lr)");
}

[[noreturn]] void throw_interrupted(const Run& r, int sig, int64_t epoch) {
  std::string where = r.state.epoch > 0
                          ? "the last checkpoint is epoch " + std::to_string(r.state.epoch) + " (" +
                                (fs::path(r.o.out) / "last").string() + "); continue with: tessera train --resume " + r.o.out
                          : "no epoch had ended, so there is no checkpoint yet: start the run again";
  throw TrainInterrupted(sig, "train: stopped by " + std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") +
                                  " in epoch " + std::to_string(epoch) + " after step " +
                                  std::to_string(r.state.global_step) + "; " + where);
}

// One epoch of optimizer steps. The step never waits for the device: loss, accuracy and gradient norm
// accumulate in device scalars, read back (one small copy) only when a metrics line or the bar needs them.
EpochTotals train_epoch(Run& r, int64_t epoch, std::ostream& log) {
  const TrainOptions& o = r.o;
  const Device device = r.device;
  ProgressBar bar(log, epoch, o.epochs, r.loader->batches_per_epoch(), o.progress);
  r.loader->start_epoch(epoch - 1);
  CrossEntropyOptions ce;
  ce.label_smoothing = o.label_smoothing;
  // --balanced-loss: cross_entropy divides by the batch's summed weights, as torch does
  if (o.balanced_loss) {
    const std::vector<double> w = balanced_class_weights(counts_of(r.data.train, r.data.classes.size()));
    ce.weight = Tensor::from(std::vector<float>(w.begin(), w.end()), {int64_t(w.size())}).to(device);
  }
  const auto params = r.optimizer->parameters();
  // Without clipping the norm is still measured (a max_norm nothing reaches), for the log and the report.
  const double max_norm = o.clip_grad > 0 ? o.clip_grad : std::numeric_limits<double>::max();
  const Tensor zero = Tensor::zeros({}, DType::f64, device);
  Tensor loss_sum = zero, correct = zero, window_loss = zero, last_norm = zero;
  int64_t seen = 0, step_in_epoch = 0, window_steps = 0;
  cuda::Event uploaded;
  EpochTotals t;
  for (;;) {
    const auto wait_started = Clock::now();
    std::optional<Batch> batch = r.loader->next();
    t.loader_wait_s += std::chrono::duration<double>(Clock::now() - wait_started).count();
    if (!batch) break;
    const int64_t n = batch->size();
    if (r.has_batch_norm && n < 2) continue;  // unreadable files left one image: nothing batch norm can use
    const double lr = r.schedule.lr_at(r.state.global_step);
    r.optimizer->set_lr(lr);
    // Mixup / CutMix on the host batch before upload; drawn from (seed, step) alone, so a resumed run
    // mixes exactly as an uninterrupted one.
    MixDraw mix;
    if (mix_enabled(r.mix)) {
      mix = draw_mix(r.mix, n, int(batch->images.size(2)), int(batch->images.size(3)), o.seed,
                     uint64_t(r.state.global_step));
      apply_mix(batch->images, mix);
    }
    auto [images, labels] = upload(*batch, device);
    if (device == Device::CUDA) uploaded.record();  // the batch's host buffers are free once the stream gets here
    // MixStyle, drawn from (seed, step) alone like the mixing above.
    const std::optional<models::StyleMix> style =
        o.mixstyle > 0 ? draw_style_mix(o.mixstyle, o.mixstyle_alpha, n, o.seed, uint64_t(r.state.global_step))
                       : std::nullopt;
    struct StyleMixSet {  // the model never keeps a pointer to this step's draw past the forward pass
      models::Model& model;
      StyleMixSet(models::Model& m, const models::StyleMix* mix) : model(m) { model.set_style_mix(mix); }
      ~StyleMixSet() { model.set_style_mix(nullptr); }
    };
    Tensor logits;
    {
      const StyleMixSet set(*r.model, style ? &*style : nullptr);
      logits = r.model->forward(images, /*training=*/true, r.gen);
    }
    Tensor loss = mix.applied ? mixed_cross_entropy(logits, labels, mix, ce) : cross_entropy(logits, labels, ce);
    loss.backward();
    last_norm = clip_grad_norm_on_device(params, max_norm);
    r.optimizer->step();
    r.optimizer->zero_grad();
    if (r.ema) r.ema->update(r.model->state_dict());
    ++r.state.global_step, ++step_in_epoch, ++window_steps;
    seen += n;
    {
      NoGradGuard no_grad;
      const Tensor l = loss.detach().to(DType::f64);
      loss_sum = add(loss_sum, mul(l, double(n)));
      window_loss = add(window_loss, l);
      // (class indices compared as f64: exact, and the elementwise kernels are float-only)
      correct = add(correct, sum(eq(argmax(logits.detach(), 1).to(DType::f64), labels.to(DType::f64))));
    }
    const bool log_now = r.state.global_step % o.log_every == 0;
    if (log_now || bar.due(step_in_epoch)) {
      const std::vector<double> v = concat({loss_sum.reshape({1}), correct.reshape({1}), window_loss.reshape({1}),
                                            last_norm.reshape({1})}, 0).to(Device::CPU).to_vector<double>();
      t.mean_loss = v[0] / double(seen), t.accuracy = v[1] / double(seen);
      check_finite(v[0], v[3], epoch, r.state.global_step);
      bar.update(step_in_epoch, seen, t.mean_loss, lr);
      if (log_now) {
        r.metrics->write({{"event", "step"}, {"epoch", epoch}, {"step", step_in_epoch}, {"global_step", r.state.global_step},
                          {"loss", v[2] / double(window_steps)}, {"lr", lr}, {"grad_norm", v[3]},
                          {"images_per_s", bar.images_per_second()},
                          {"elapsed_s", std::chrono::duration<double>(Clock::now() - r.started).count()}});
        window_loss = zero, window_steps = 0;
      }
    }
    // The loader refills this batch's buffers once next() is called: wait for the upload (queued behind
    // the previous step's kernels; this step's are queued already, so the device stays busy).
    if (device == Device::CUDA) uploaded.synchronize();
    if (const int sig = pending_signal.load()) throw_interrupted(r, sig, epoch);
    if (o.halt_after_steps > 0 && r.state.global_step >= o.halt_after_steps) {
      log.flush();
      std::_Exit(137);  // as if killed: no checkpoint, no cleanup (the resume test's interruption)
    }
  }
  if (seen > 0) t.mean_loss = loss_sum.item() / double(seen), t.accuracy = correct.item() / double(seen);
  check_finite(t.mean_loss, last_norm.item(), epoch, r.state.global_step);
  bar.finish();
  return t;
}

// After an epoch: validation, the epoch's metrics line and log line, and the checkpoint.
// After an epoch: validation, the epoch's metrics line and log line, and the checkpoint. With --ema the
// moving average is what the run selects, saves as the model and finally evaluates on Testing (as timm
// does); the raw weights' validation accuracy is logged beside it.
void end_epoch(Run& r, int64_t epoch, const EpochTotals& t, Clock::time_point epoch_started, std::ostream& log) {
  std::optional<double> raw_accuracy;
  if (r.ema) {
    raw_accuracy = evaluate_split(r, *r.model, r.data.val, nullptr).report.accuracy;
    r.ema_model->load_state_dict(r.ema->average(), "the weights' moving average");
  }
  models::Model& judged = r.ema ? *r.ema_model : *r.model;
  EvalResult val = evaluate_split(r, judged, r.data.val, &r.data.val_novel);
  r.val_skipped = val.skipped;
  const double brightened_accuracy =
      evaluate_split(r, judged, r.data.val, nullptr, [](Image& im) { im = adjust_brightness(im, kScannerCheckBrightness); })
          .report.accuracy;
  // null when every validation image has a near-copy in train (never with the grouped split)
  const json val_novel = *val.novel_total ? json(double(*val.novel_correct) / double(*val.novel_total)) : json(nullptr);
  if (!std::isfinite(val.loss))
    throw std::runtime_error("train: the validation loss after epoch " + std::to_string(epoch) + " is " +
                             std::to_string(val.loss) + ": the model's outputs are not finite; no checkpoint was "
                             "written for this epoch");
  const double val_acc = val.report.accuracy;
  const bool best = study::is_better(val_acc, r.state.best_val_accuracy);
  if (best) r.state.best_val_accuracy = val_acc, r.state.best_epoch = epoch;
  const double epoch_s = std::chrono::duration<double>(Clock::now() - epoch_started).count();
  json line = {{"event", "epoch"}, {"epoch", epoch}, {"global_step", r.state.global_step},
               {"lr", r.schedule.lr_at(r.state.global_step - 1)},
               {"train_loss", t.mean_loss}, {"train_accuracy", t.accuracy},
               {"val_loss", val.loss}, {"val_accuracy", val_acc}, {"val_f1_weighted", val.report.weighted.f1},
               {"val_f1_macro", val.report.macro.f1}, {"val_recall_weighted", val.report.weighted.recall},
               {"val_novel_accuracy", val_novel}, {"val_novel_images", *val.novel_total},
               {"val_raw_accuracy", raw_accuracy ? json(*raw_accuracy) : json(nullptr)},
               {"val_brightened_accuracy", brightened_accuracy},
               {"epoch_s", epoch_s}, {"loader_wait_s", t.loader_wait_s}, {"best", best}};
  r.metrics->write(line);
  char text[320], novel_text[16] = "-", raw_text[32] = "";
  if (!val_novel.is_null()) std::snprintf(novel_text, sizeof novel_text, "%.4f", val_novel.get<double>());
  if (raw_accuracy) std::snprintf(raw_text, sizeof raw_text, " (EMA; raw %.4f)", *raw_accuracy);
  std::snprintf(text, sizeof text,
                "epoch %lld/%lld  train loss %.4f acc %.4f | val loss %.4f acc %.4f%s, no near-copy in train %s,"
                " brightened %.4f, F1 w %.4f m %.4f | %.0f s (loader wait %.1f s)%s\n",
                static_cast<long long>(epoch), static_cast<long long>(r.o.epochs), t.mean_loss, t.accuracy, val.loss,
                val_acc, raw_text, novel_text, brightened_accuracy, val.report.weighted.f1, val.report.macro.f1, epoch_s, t.loader_wait_s,
                best ? "  * best" : "");
  log << text << std::flush;

  r.state.epoch = epoch;
  r.state.rng_seed = r.gen.seed(), r.state.rng_offset = r.gen.offset();
  r.state.metrics_bytes = r.metrics->bytes();
  r.state.epoch_metrics = line;
  // --halt-in-checkpoint EPOCH:STAGE (tests): end as a kill would, inside this checkpoint's write.
  auto halt = [&](std::string_view stage) {
    if (r.o.halt_in_checkpoint == std::to_string(epoch) + ":" + std::string(stage)) {
      log.flush();
      std::_Exit(137);
    }
  };
  save_checkpoint(r.o.out, *r.model, *r.optimizer, r.eval_processor, r.state, best, r.ema.get(), halt);
}

// The novel subset of Testing (RunData), written to the run directory for eval_Testing.json to name.
std::string write_novel_list(const Run& r) {
  const std::string list_file = (fs::path(r.o.out) / "novel_testing.txt").string();
  write_file_atomic(list_file, novel_list_text(r.data.fingerprints.at("Testing"), r.data.test_novel));
  return list_file;
}

// The final evaluation: the best checkpoint on Testing (when the data has it), then the report.
void final_evaluation(const Run& r, TrainSummary& summary, std::ostream& log) {
  int64_t test_skipped = 0;
  if (!r.data.test.empty()) {
    const std::string best_dir = (fs::path(r.o.out) / "best").string();
    auto best = models::load_model(best_dir);
    best->to(r.device);
    best->set_compute_dtype(r.compute);
    const std::string novel_file = write_novel_list(r);
    EvalResult test = evaluate_split(r, *best, r.data.test, &r.data.test_novel);
    write_file_atomic((fs::path(r.o.out) / "eval_Testing.json").string(),
                      dump_json(eval_to_json(test, "Testing", best_dir, novel_file), 1) + "\n");
    log << "\nbest epoch " << r.state.best_epoch << " (validation accuracy " << r.state.best_val_accuracy << ")\n"
        << format_eval(test, "Testing");
    summary.test_accuracy = test.report.accuracy;
    if (test.novel_total && *test.novel_total) summary.novel_accuracy = double(*test.novel_correct) / double(*test.novel_total);
    test_skipped = test.skipped;
  }
  // Every split's unreadable files, so that none is left out of the numbers without a word (the train
  // split's: those this process's epochs met).
  if (const int64_t train_skipped = r.loader->skipped(); train_skipped + r.val_skipped + test_skipped > 0)
    log << "unreadable files skipped: train " << train_skipped << ", validation " << r.val_skipped << ", Testing "
        << test_skipped << "\n";
  write_report(r.o.out);
}

}  // namespace

TrainSummary train(TrainOptions options, std::ostream& log, const std::string& command_line) {
  SignalGuard signals;
  Run r;
  r.started = Clock::now();
  setup(r, options, log, command_line);
  for (int64_t epoch = r.state.epoch + 1; epoch <= r.o.epochs; ++epoch) {
    const auto epoch_started = Clock::now();
    const EpochTotals totals = train_epoch(r, epoch, log);
    end_epoch(r, epoch, totals, epoch_started, log);
    if (const int sig = pending_signal.load()) throw_interrupted(r, sig, epoch);
  }
  TrainSummary summary;
  summary.out = r.o.out;
  summary.best_epoch = r.state.best_epoch;
  summary.best_val_accuracy = r.state.best_val_accuracy;
  final_evaluation(r, summary, log);
  summary.seconds = std::chrono::duration<double>(Clock::now() - r.started).count();
  log << "report: " << (fs::path(r.o.out) / "report.html").string() << "  (" << std::llround(summary.seconds) << " s)\n";
  return summary;
}

}  // namespace tessera::train
