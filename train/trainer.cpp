#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <iostream>
#include <sstream>

#include "data/audit.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "engine/core/cuda.h"
#include "engine/core/fileio.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "train/schedule.h"
#include "models/model.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/progress.h"
#include "train/report.h"
#include "train/synthetic.h"

namespace tessera::train {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- recipes

TrainOptions recipe_options(const std::string& name) {
  TrainOptions o;  // the struct's defaults are the study's protocol
  o.recipe = name;
  if (name == "study") {
    o.study_pipeline = true;
    return o;
  }
  if (name == "default") {
    // From-scratch CvT-13. A transformer without pretraining on 2,296 images needs what DeiT-style
    // recipes give it: a much larger lr than fine-tuning, warmup then a cosine decay, stronger weight decay,
    // label smoothing, drop path, and wider crops (scale down to 0.35) so each epoch sees new views.
    // Vertical flips are off: an upside-down brain is not a view the Testing images contain.
    o.model = "cvt-13";
    o.epochs = 60;
    o.batch_size = 32;
    o.lr = 5e-4;
    o.weight_decay = 0.05;
    o.schedule = "cosine";
    o.warmup = "3ep";
    o.label_smoothing = 0.1;
    o.clip_grad = 1.0;
    o.drop_path = 0.1;
    o.crop_scale_min = 0.35;
    o.p_vflip = 0;
    return o;
  }
  if (name == "cpu") {
    // The default recipe shrunk to fit minutes on 2 CPU cores: cvt-tiny (a CvT of the same
    // design, 2.2 M parameters) at 64×64, 7 epochs (≈ 4 minutes on 2 cores). Same pipeline, same report.
    o = recipe_options("default");
    o.recipe = name;
    o.model = "cvt-tiny";
    o.image_size = 64;
    o.epochs = 7;
    o.lr = 1e-3;
    o.warmup = "1ep";
    o.drop_path = 0.0;
    // Chosen on validation accuracy among four 7-epoch variants (README): crops down to 0.6 of the area
    // (0.730) beat 0.35 (0.674), 0.8 without smoothing (0.686) and lr 2e-3 (0.592).
    o.crop_scale_min = 0.6;
    o.eval_batch_size = 64;
    o.device = "cpu";
    return o;
  }
  std::string all;
  for (const auto& n : recipe_names()) all += (all.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown recipe '" + name + "' (known: " + all + ")");
}

std::vector<std::string> recipe_names() { return {"default", "study", "cpu"}; }

// One table of every option: its JSON name and the member, so options_to_json / options_from_json cannot
// drift apart.
namespace {

template <typename F>
void for_each_option(TrainOptions& o, F&& f) {
  f("recipe", o.recipe), f("model", o.model), f("config", o.config), f("weights", o.weights);
  f("keep_imagenet_head", o.keep_imagenet_head), f("drop_path", o.drop_path), f("data", o.data);
  f("synthetic", o.synthetic), f("val_fraction", o.val_fraction), f("image_size", o.image_size);
  f("static_augment", o.static_augment), f("rotation", o.rotation), f("crop_scale_min", o.crop_scale_min);
  f("brightness", o.brightness), f("contrast", o.contrast), f("p_vflip", o.p_vflip);
  f("study_pipeline", o.study_pipeline), f("max_train_samples", o.max_train_samples), f("workers", o.workers);
  f("epochs", o.epochs), f("batch_size", o.batch_size), f("eval_batch_size", o.eval_batch_size);
  f("lr", o.lr), f("weight_decay", o.weight_decay), f("label_smoothing", o.label_smoothing);
  f("clip_grad", o.clip_grad), f("schedule", o.schedule), f("warmup", o.warmup), f("seed", o.seed);
  f("device", o.device), f("precision", o.precision), f("out", o.out), f("log_every", o.log_every);
}

}  // namespace

nlohmann::json options_to_json(const TrainOptions& o) {
  json j = json::object();
  for_each_option(const_cast<TrainOptions&>(o), [&](const char* name, const auto& v) { j[name] = v; });
  return j;
}

TrainOptions options_from_json(const nlohmann::json& j, const std::string& source) {
  TrainOptions o;
  for_each_option(o, [&](const char* name, auto& v) {
    if (!j.contains(name)) throw std::runtime_error(source + ": options lack '" + name + "'");
    try {
      j.at(name).get_to(v);
    } catch (const json::exception& e) {
      throw std::runtime_error(source + ": option '" + std::string(name) + "': " + e.what());
    }
  });
  return o;
}

void validate(const TrainOptions& o) {
  std::vector<std::string> problems;
  auto need = [&](bool ok, const std::string& what) {
    if (!ok) problems.push_back(what);
  };
  need(o.epochs >= 1, "--epochs must be at least 1");
  need(o.batch_size >= 1, "--batch-size must be at least 1");
  need(o.eval_batch_size >= 1, "the evaluation batch size must be at least 1");
  need(std::isfinite(o.lr) && o.lr > 0, "--lr must be a positive number");
  need(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "--weight-decay must be >= 0");
  need(o.label_smoothing >= 0 && o.label_smoothing < 1, "--label-smoothing must be in [0, 1)");
  need(o.clip_grad >= 0, "--clip-grad must be >= 0 (0: no clipping)");
  need(o.val_fraction > 0 && o.val_fraction < 1, "--val-fraction must be in (0, 1)");
  need(o.image_size >= 16 && o.image_size <= 1024, "--image-size must be in [16, 1024]");
  need(o.drop_path < 1, "--drop-path must be < 1");
  need(o.max_train_samples >= 0, "--max-train-samples must be >= 0");
  need(o.workers >= 0, "--workers must be >= 0");
  need(o.log_every >= 1, "--log-every must be at least 1");
  need(o.precision == "fp32" || o.precision == "bf16", "--precision must be fp32 or bf16, not '" + o.precision + "'");
  need(o.device.empty() || o.device == "cpu" || o.device == "cuda", "--device must be cuda or cpu, not '" + o.device + "'");
  need(!o.out.empty(), "--out must name a directory");
  need(!o.data.empty() || o.synthetic, "give --data ROOT (or --synthetic)");
  need(!(o.keep_imagenet_head && o.weights.empty()),
       "--keep-imagenet-head needs --weights (a checkpoint whose head to keep)");
  try {
    parse_schedule_kind(o.schedule);
  } catch (const std::exception& e) {
    problems.push_back(std::string("--schedule: ") + e.what());
  }
  try {
    AugmentConfig a;
    a.rotation_degrees = o.rotation, a.crop_scale_min = o.crop_scale_min, a.brightness = o.brightness;
    a.contrast = o.contrast, a.p_vflip = o.p_vflip;
    tessera::validate(a);
  } catch (const std::exception& e) {
    problems.push_back(std::string("augmentation: ") + e.what());
  }
  if (!problems.empty()) {
    std::string msg = "train: ";
    for (size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    throw std::invalid_argument(msg);
  }
}

Device resolve_device(const std::string& name, std::ostream& log) {
  if (name != "" && name != "cpu" && name != "cuda")
    throw std::invalid_argument("--device must be cuda or cpu, not '" + name + "'");
  const bool gpu = cuda::available();
  if (name == "cuda" && !gpu) throw std::runtime_error("--device cuda: " + cuda::status());
  if (name == "cuda" && !kModelsOnCuda)
    log << "warning: the CvT/ViT CUDA path has not been verified on a GPU yet (kernels compiled, not run)\n";
  if (name == "cuda") return Device::CUDA;
  if (name.empty() && gpu) {
    if (kModelsOnCuda) return Device::CUDA;
    log << "note: a GPU is present, but the CvT/ViT CUDA path is not verified yet: running on the CPU "
           "(--device cuda to try it)\n";
  }
  return Device::CPU;
}

namespace {

// "500" steps, "0.05" of all steps, "2ep" epochs.
int64_t parse_warmup(const std::string& text, int64_t steps_per_epoch, int64_t total_steps) {
  try {
    size_t used = 0;
    if (text.size() > 2 && text.compare(text.size() - 2, 2, "ep") == 0) {
      double epochs = std::stod(text.substr(0, text.size() - 2), &used);
      if (used == text.size() - 2 && epochs >= 0) return std::min(total_steps, int64_t(std::llround(epochs * double(steps_per_epoch))));
    } else if (text.find('.') != std::string::npos) {
      double f = std::stod(text, &used);
      if (used == text.size() && f >= 0 && f <= 1) return int64_t(std::ceil(f * double(total_steps)));  // HF's warmup_ratio
    } else {
      long long n = std::stoll(text, &used);
      if (used == text.size() && n >= 0) return std::min<int64_t>(total_steps, n);
    }
  } catch (const std::exception&) {
  }
  throw std::invalid_argument("--warmup '" + text + "': give steps (500), a fraction of training (0.05) or epochs (2ep)");
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

// The data a run uses, after the split.
struct RunData {
  std::string root;
  std::vector<std::string> classes;
  std::vector<Sample> train, val, test;  // test empty for a flat folder
};

RunData load_data(const TrainOptions& o) {
  RunData d;
  d.root = o.data;
  DatasetSplit all;
  if (detect_layout(o.data) == Layout::Split) {
    SplitLayout s = load_split_layout(o.data);
    all = std::move(s.train);
    d.test = std::move(s.test.samples);
  } else {
    all = scan_folder(o.data);
  }
  d.classes = all.classes;
  TrainVal tv = stratified_split(all, o.val_fraction, o.seed);
  d.train = std::move(tv.train.samples);
  d.val = std::move(tv.val.samples);
  if (o.max_train_samples > 0 && o.max_train_samples < int64_t(d.train.size())) {
    DatasetSplit part{d.classes, d.train};
    d.train = stratified_split(part, double(o.max_train_samples) / double(part.size()), o.seed + 1).val.samples;
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
ProcessorConfig eval_processor(const models::ModelConfig& c, int size) {
  return std::holds_alternative<models::VitConfig>(c) ? ProcessorConfig::vit(size) : ProcessorConfig::cvt(size);
}

std::unique_ptr<models::Model> build_model(const TrainOptions& o, const std::vector<std::string>& classes) {
  models::ModelConfig config;
  std::string weights_file = o.weights;
  if (!o.weights.empty() && fs::is_directory(o.weights)) weights_file = (fs::path(o.weights) / "model.safetensors").string();
  if (!o.config.empty()) config = models::load_config(o.config);
  else if (!o.weights.empty() && fs::is_directory(o.weights)) config = models::load_config((fs::path(o.weights) / "config.json").string());
  else config = models::preset_config(o.model);
  if (auto* cvt = std::get_if<models::CvtConfig>(&config); cvt && o.drop_path >= 0) cvt->drop_path_rate.back() = o.drop_path;
  if (auto* vit = std::get_if<models::VitConfig>(&config)) vit->image_size = o.image_size;

  if (o.weights.empty()) {
    models::set_labels(config, classes);
    return models::make_model(config, o.seed);
  }
  models::LoadOptions load;
  if (o.keep_imagenet_head) {
    // The checkpoint's head as it is: its row count decides the label count; the data's classes are
    // labels 0..C-1 inside it (the study's mistake).
    SafetensorsFile w(weights_file);
    if (w.contains("classifier.weight"))
      models::set_labels(config, models::default_labels(w.info("classifier.weight").shape.at(0)));
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
    out_ << j.dump() << "\n";
    out_.flush();
    if (!out_) throw FileError(path_ + ": cannot write");
  }
  int64_t bytes() { return int64_t(out_.tellp()); }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace

TrainSummary train(TrainOptions o, std::ostream& log, const std::string& command_line) {
  const auto t_start = Clock::now();
  TrainSummary summary;

  // ---- resume: the run's own options; only where to run may change
  std::string resume_from;
  std::optional<TrainerState> resumed;
  if (!o.resume.empty()) {
    resume_from = last_checkpoint(o.resume);
    const std::string run_json = (fs::path(o.resume) / "run.json").string();
    json run;
    try {
      run = json::parse(read_file(run_json));
    } catch (const json::exception& e) {
      throw std::runtime_error(run_json + ": not valid JSON: " + e.what());
    }
    TrainOptions stored = options_from_json(run.at("options"), run_json);
    stored.device = o.device.empty() ? stored.device : o.device;
    stored.workers = o.workers;
    stored.progress = o.progress;
    stored.halt_after_steps = o.halt_after_steps;
    stored.out = o.resume;
    stored.resume = o.resume;
    o = stored;
    resumed = load_trainer_state(resume_from);
  }
  validate(o);
  const Device device = resolve_device(o.device, log);
  if (o.precision == "bf16" && device != Device::CUDA)
    throw std::runtime_error("train: --precision bf16 needs --device cuda (the CPU backend computes in fp32 and fp64)");
  // bf16: activations in bf16, fp32 master weights and optimizer state (Model::set_compute_dtype).
  const DType compute = o.precision == "bf16" ? DType::bf16 : DType::f32;

  // A new run never starts over an old one: its checkpoints and links would mix with the new run's.
  if (!resumed && (fs::exists(fs::path(o.out) / "last") || fs::exists(fs::path(o.out) / "run.json")))
    throw std::runtime_error("train: " + o.out + " already holds a run; continue it with --resume " + o.out +
                             ", or choose another --out (or remove it)");
  fs::create_directories(o.out);
  if (o.synthetic) {
    if (o.data.empty()) o.data = (fs::path(o.out) / "synthetic-data").string();
    make_synthetic_dataset(o.data, o.seed);
  }
  RunData data = load_data(o);
  const size_t C = data.classes.size();
  auto model = build_model(o, data.classes);
  model->to(device);  // before the optimizer: its moments live where the parameters do
  model->set_compute_dtype(compute);
  const models::ModelConfig& mc = model->config();

  // ---- the pipelines
  LoaderConfig train_cfg;
  ProcessorConfig eval_proc = eval_processor(mc, o.image_size);
  AugmentConfig aug;
  aug.rotation_degrees = o.rotation, aug.crop_scale_min = o.crop_scale_min;
  aug.brightness = o.brightness, aug.contrast = o.contrast, aug.p_vflip = o.p_vflip;
  aug.out_width = aug.out_height = o.image_size;
  std::function<void(Image&, int64_t)> study_resize;
  train_cfg.processor = eval_proc;
  if (o.study_pipeline) {
    // The study: every image resized to image_size² first, augmented, then the model's processor on top
    // (which for CvT resizes again to 256 and crops 224: its third mistake, kept for reproduction).
    const int s = o.image_size;
    study_resize = [s](Image& im, int64_t) { im = resize(im, s, s, Filter::Bilinear); };
  } else {
    train_cfg.processor.mode = ProcessorConfig::Resize::Squash;  // the crop already has the output size
  }
  std::vector<Sample> train_samples = data.train;
  if (o.static_augment) {
    // The study's first mistake: one augmented copy of each image, made once, plus the originals.
    const int64_t n = int64_t(train_samples.size());
    train_samples.insert(train_samples.end(), data.train.begin(), data.train.end());
    const uint64_t seed = o.seed;
    const bool pre = o.study_pipeline;
    const int s = o.image_size;
    train_cfg.prepare = [=](Image& im, int64_t i) {
      if (pre) im = resize(im, s, s, Filter::Bilinear);
      if (i >= n) im = augment(im, aug, seed, uint64_t(i - n));
    };
  } else {
    train_cfg.augment = aug;
    train_cfg.prepare = study_resize;
  }
  train_cfg.batch_size = o.batch_size;
  // A last batch of one image cannot train CvT's BatchNorm (no variance; torch refuses it too): drop it.
  const bool has_batch_norm = std::holds_alternative<models::CvtConfig>(mc);
  if (has_batch_norm && int64_t(train_samples.size()) % o.batch_size == 1) {
    train_cfg.drop_last = true;
    log << "note: dropping each epoch's last batch of 1 image (batch norm needs 2)\n";
  }
  train_cfg.shuffle = true;
  train_cfg.seed = o.seed;
  train_cfg.num_workers = o.workers;
  train_cfg.cache_decoded = true;  // the set is small (≈0.6 GB decoded); decoding once saves a core-second per 400 images
  DataLoader loader(train_samples, model->num_labels(), train_cfg);

  EvalOptions eval_opts;
  eval_opts.batch_size = o.eval_batch_size;
  eval_opts.workers = o.workers;
  eval_opts.device = device;
  // Evaluation images through the same prepare step as training's (the study's 224 resize).
  auto evaluate_split = [&](models::Model& m, const std::vector<Sample>& samples, const std::set<std::string>* novel) {
    EvalOptions e = eval_opts;
    e.novel = novel;
    e.root = data.root;
    e.prepare = study_resize;
    return evaluate(m, samples, data.classes, eval_proc, e);
  };

  // ---- optimisation
  AdamWOptions ao;
  ao.lr = o.lr;
  ao.weight_decay = o.weight_decay;
  AdamW optimizer(trainer_param_groups(model->parameters(), o.weight_decay), ao);
  const int64_t steps_per_epoch = loader.batches_per_epoch();
  LrSchedule schedule;
  schedule.kind = parse_schedule_kind(o.schedule);
  schedule.base_lr = o.lr;
  schedule.total_steps = steps_per_epoch * o.epochs;
  schedule.warmup_steps = parse_warmup(o.warmup, steps_per_epoch, schedule.total_steps);
  schedule.validate();
  Generator gen(o.seed ^ 0x5EED0D120FULL);  // dropout / drop path, apart from the init stream

  TrainerState state;
  if (resumed) {
    model->load_safetensors((fs::path(resume_from) / "model.safetensors").string());
    load_optimizer(optimizer, (fs::path(resume_from) / "optimizer.safetensors").string());
    state = *resumed;
    gen.set_state(state.rng_seed, state.rng_offset);
    log << "resuming " << o.out << " after epoch " << state.epoch << " (step " << state.global_step << ")\n";
  } else {
    json run = {{"tessera_version", TESSERA_VERSION}, {"command", command_line}, {"started", utc_now()},
                {"model", o.config.empty() ? o.model : o.config}, {"device", device_name(device)},
                {"precision", o.precision}, {"image_size", o.image_size}, {"classes", data.classes},
                {"parameters", model->num_parameters()},
                {"data", {{"root", data.root}, {"synthetic", o.synthetic},
                          {"counts", {{"train", counts_of(data.train, C)}, {"validation", counts_of(data.val, C)},
                                      {"Testing", counts_of(data.test, C)}}}}},
                {"options", options_to_json(o)}};
    write_file_atomic((fs::path(o.out) / "run.json").string(), run.dump(2) + "\n");
  }
  MetricsLog metrics((fs::path(o.out) / "metrics.jsonl").string(), resumed ? state.metrics_bytes : 0);

  log << "train: " << (o.config.empty() ? o.model : o.config) << " (" << model->num_parameters() << " parameters"
      << (o.weights.empty() ? ", from scratch" : ", from " + o.weights) << ") on " << data.train.size() << " images ("
      << data.val.size() << " validation, " << data.test.size() << " Testing), " << C << " classes, "
      << o.image_size << "px, " << o.epochs << " epochs × " << steps_per_epoch << " steps of " << o.batch_size
      << ", recipe " << o.recipe << ", device " << device_name(device) << ", out " << o.out << "\n";

  CrossEntropyOptions ce;
  ce.label_smoothing = o.label_smoothing;
  const auto params = optimizer.parameters();
  for (int64_t epoch = state.epoch + 1; epoch <= o.epochs; ++epoch) {
    const auto t_epoch = Clock::now();
    ProgressBar bar(log, epoch, o.epochs, steps_per_epoch, o.progress);
    loader.start_epoch(epoch - 1);
    // The step never waits for the device: loss, accuracy and gradient norm accumulate in device scalars,
    // read back (one small copy) only when a metrics line or the progress bar needs them.
    const Tensor zero = Tensor::zeros({}, DType::f64, device);
    Tensor loss_sum = zero, correct = zero, window_loss = zero, last_norm = zero;
    int64_t seen = 0, step_in_epoch = 0, window_steps = 0;
    cuda::Event uploaded;
    double mean_loss = 0, accuracy = 0;
    while (auto batch = loader.next()) {
      const int64_t n = batch->size();
      if (has_batch_norm && n < 2) continue;  // unreadable files left one image: nothing batch norm can use
      const double lr = schedule.lr_at(state.global_step);
      optimizer.set_lr(lr);
      auto [images, labels] = upload(*batch, device);
      if (device == Device::CUDA) uploaded.record();  // the batch's host buffers are free once this point of the stream is reached
      Tensor logits = model->forward(images, /*training=*/true, gen);
      Tensor loss = cross_entropy(logits, labels, ce);
      loss.backward();
      // Without clipping the norm is still measured (a max_norm nothing reaches), for the log and the report.
      last_norm = clip_grad_norm_on_device(params, o.clip_grad > 0 ? o.clip_grad : std::numeric_limits<double>::max());
      optimizer.step();
      optimizer.zero_grad();
      ++state.global_step, ++step_in_epoch, ++window_steps;
      seen += n;
      {
        NoGradGuard no_grad;
        const Tensor l = loss.detach().to(DType::f64);
        loss_sum = add(loss_sum, mul(l, double(n)));
        window_loss = add(window_loss, l);
        // (class indices compared as f64: exact, and the elementwise kernels are float-only)
        correct = add(correct, sum(eq(argmax(logits.detach(), 1).to(DType::f64), labels.to(DType::f64))));
      }
      const bool log_now = state.global_step % o.log_every == 0;
      if (log_now || bar.due(step_in_epoch)) {
        const std::vector<double> v = concat({loss_sum.reshape({1}), correct.reshape({1}), window_loss.reshape({1}),
                                              last_norm.reshape({1})}, 0).to(Device::CPU).to_vector<double>();
        mean_loss = v[0] / double(seen), accuracy = v[1] / double(seen);
        bar.update(step_in_epoch, seen, mean_loss, lr);
        if (log_now) {
          metrics.write({{"event", "step"}, {"epoch", epoch}, {"step", step_in_epoch}, {"global_step", state.global_step},
                         {"loss", v[2] / double(window_steps)}, {"lr", lr}, {"grad_norm", v[3]},
                         {"images_per_s", bar.images_per_second()},
                         {"elapsed_s", std::chrono::duration<double>(Clock::now() - t_start).count()}});
          window_loss = zero, window_steps = 0;
        }
      }
      // The loader refills this batch's buffers once next() is called: wait for the upload (queued behind
      // the previous step's kernels; this step's are queued already, so the device stays busy).
      if (device == Device::CUDA) uploaded.synchronize();
      if (o.halt_after_steps > 0 && state.global_step >= o.halt_after_steps) {
        log.flush();
        std::_Exit(137);  // as if killed: no checkpoint, no cleanup (the resume test's interruption)
      }
    }
    if (seen > 0) {  // the epoch's totals
      mean_loss = loss_sum.item() / double(seen);
      accuracy = correct.item() / double(seen);
    }
    bar.finish();

    EvalResult val = evaluate_split(*model, data.val, nullptr);
    const double val_acc = val.report.accuracy;
    const bool best = val_acc > state.best_val_accuracy;  // strict: a tie keeps the earlier epoch (Trainer)
    if (best) state.best_val_accuracy = val_acc, state.best_epoch = epoch;
    const double epoch_s = std::chrono::duration<double>(Clock::now() - t_epoch).count();
    json line = {{"event", "epoch"}, {"epoch", epoch}, {"global_step", state.global_step},
                 {"lr", schedule.lr_at(state.global_step - 1)},
                 {"train_loss", mean_loss}, {"train_accuracy", accuracy},
                 {"val_loss", val.loss}, {"val_accuracy", val_acc}, {"val_f1_weighted", val.report.weighted.f1},
                 {"val_f1_macro", val.report.macro.f1}, {"val_recall_weighted", val.report.weighted.recall},
                 {"epoch_s", epoch_s}, {"best", best}};
    metrics.write(line);
    char text[256];
    std::snprintf(text, sizeof text,
                  "epoch %lld/%lld  train loss %.4f acc %.4f | val loss %.4f acc %.4f F1 w %.4f m %.4f recall w %.4f"
                  " | %.0f s%s\n",
                  static_cast<long long>(epoch), static_cast<long long>(o.epochs), line["train_loss"].get<double>(),
                  line["train_accuracy"].get<double>(), val.loss, val_acc, val.report.weighted.f1,
                  val.report.macro.f1, val.report.weighted.recall, epoch_s, best ? "  * best" : "");
    log << text << std::flush;

    state.epoch = epoch;
    state.rng_seed = gen.seed(), state.rng_offset = gen.offset();
    state.metrics_bytes = metrics.bytes();
    state.epoch_metrics = line;
    save_checkpoint(o.out, *model, optimizer, eval_proc, state, best);
  }

  summary.out = o.out;
  summary.best_epoch = state.best_epoch;
  summary.best_val_accuracy = state.best_val_accuracy;

  // ---- the best checkpoint on Testing
  if (!data.test.empty()) {
    const std::string best_dir = (fs::path(o.out) / "best").string();
    auto best = models::load_model(best_dir);
    best->to(device);
    best->set_compute_dtype(compute);
    // The novel subset: the audit's list when one was written for this data, else one made now.
    std::string novel_list = "audit/novel_testing.txt";
    std::optional<std::set<std::string>> novel = load_novel_list(novel_list);
    if (novel && !novel->empty() && !fs::exists(fs::path(data.root) / *novel->begin())) novel.reset();  // another data set's
    if (!novel) {
      novel_list = (fs::path(o.out) / "novel_testing.txt").string();
      AuditReport audit = audit_dataset(data.root);
      std::string text;
      std::set<std::string> list;
      for (int i : audit.novel) text += audit.images[size_t(i)].path + "\n", list.insert(audit.images[size_t(i)].path);
      write_file_atomic(novel_list, text);
      novel = std::move(list);
    }
    EvalResult test = evaluate_split(*best, data.test, &*novel);
    json j = eval_to_json(test, "Testing", best_dir, novel_list);
    write_file_atomic((fs::path(o.out) / "eval_Testing.json").string(), j.dump(1) + "\n");
    log << "\nbest epoch " << state.best_epoch << " (validation accuracy " << state.best_val_accuracy << ")\n"
        << format_eval(test, "Testing");
    summary.test_accuracy = test.report.accuracy;
    if (test.novel_total && *test.novel_total) summary.novel_accuracy = double(*test.novel_correct) / double(*test.novel_total);
  }
  write_report(o.out);
  summary.seconds = std::chrono::duration<double>(Clock::now() - t_start).count();
  log << "report: " << (fs::path(o.out) / "report.html").string() << "  (" << std::llround(summary.seconds) << " s)\n";
  return summary;
}

}  // namespace tessera::train
