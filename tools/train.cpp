// `tessera train`: the command line over train/trainer.h. Options start from --recipe (default, study,
// cpu); every option given explicitly overrides the recipe's value.
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>

#include "tools/cli.h"
#include "train/trainer.h"

namespace tessera::cli {

namespace {

struct TrainCli {
  std::string recipe = "default";
  train::TrainOptions values;  // what the flags wrote; applied only for flags given
  std::vector<std::pair<CLI::Option*, std::function<void(train::TrainOptions&)>>> overrides;
};

template <typename T>
CLI::Option* option(CLI::App* sub, TrainCli& t, const std::string& flags, T train::TrainOptions::*member, const std::string& help) {
  CLI::Option* opt = sub->add_option(flags, t.values.*member, help);
  t.overrides.emplace_back(opt, [&t, member](train::TrainOptions& o) { o.*member = t.values.*member; });
  return opt;
}

void flag(CLI::App* sub, TrainCli& t, const std::string& flags, bool train::TrainOptions::*member, const std::string& help) {
  CLI::Option* opt = sub->add_flag(flags, t.values.*member, help);
  t.overrides.emplace_back(opt, [&t, member](train::TrainOptions& o) { o.*member = t.values.*member; });
}

void run_train(TrainCli& t) {
  train::TrainOptions o = train::recipe_options(t.recipe);
  std::vector<std::string> given;
  for (auto& [opt, apply] : t.overrides)
    if (opt->count() > 0) {
      apply(o);
      given.push_back(opt->get_name());
    }
  if (!o.resume.empty()) {
    // A resumed run keeps its own options (they decide the result); only where and how it runs may change.
    for (const std::string& name : given)
      if (name != "--resume" && name != "--device" && name != "--workers" && name != "--no-progress" &&
          name != "--halt-after-steps")
        throw std::runtime_error("train: --resume continues a run with its own options; " + name +
                                 " cannot be changed (start a new run with --out instead)");
  }
  const bool data_given = !o.data.empty();
  if (o.resume.empty() && !o.synthetic && !std::filesystem::exists(o.data)) {
    std::cerr << "tessera: error: the data set is not at " << o.data << "\n"
              << "  Get the brain-tumour MRI set (Training/ and Testing/ folders of glioma_tumor, meningioma_tumor,\n"
              << "  no_tumor, pituitary_tumor) from https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet\n"
              << "  and pass --data ROOT, or run on a synthetic 4-class set with --synthetic.\n";
    throw std::runtime_error("train: no data at " + (data_given ? o.data : std::string("(none given)")));
  }
  train::train(o, std::cout, command_line());
}

}  // namespace

void add_train(CLI::App& app) {
  auto t = std::make_shared<TrainCli>();
  CLI::App* sub = app.add_subcommand("train", "Train or fine-tune a CvT/ViT classifier on an image-folder data set");
  sub->add_option("--recipe,--preset", t->recipe,
                  "Starting values: default (from-scratch CvT-13), study (the study's Trainer protocol), cpu "
                  "(a reduced run for a CPU)")->capture_default_str();
  option(sub, *t, "--model", &train::TrainOptions::model, "Architecture preset (cvt-13, cvt-tiny, vit-b16, ...)");
  option(sub, *t, "--config", &train::TrainOptions::config, "A Hugging Face config.json instead of --model");
  option(sub, *t, "--weights", &train::TrainOptions::weights,
         "Initial weights: model.safetensors or a checkpoint directory (omit to train from scratch)");
  flag(sub, *t, "--keep-imagenet-head", &train::TrainOptions::keep_imagenet_head,
       "Keep the checkpoint's classifier (the study's mistake; for comparison)");
  option(sub, *t, "--data", &train::TrainOptions::data, "ROOT with Training/ and Testing/ (or ROOT/<class>/)");
  flag(sub, *t, "--synthetic", &train::TrainOptions::synthetic, "Use a generated 4-class set (not MRI) in OUT/synthetic-data");
  option(sub, *t, "--epochs", &train::TrainOptions::epochs, "Epochs");
  option(sub, *t, "--batch-size", &train::TrainOptions::batch_size, "Images per optimizer step");
  option(sub, *t, "--lr", &train::TrainOptions::lr, "Peak learning rate");
  option(sub, *t, "--weight-decay", &train::TrainOptions::weight_decay, "AdamW weight decay (not on biases and LayerNorms)");
  option(sub, *t, "--warmup", &train::TrainOptions::warmup, "Warmup: steps (500), a fraction (0.05) or epochs (2ep)");
  option(sub, *t, "--schedule", &train::TrainOptions::schedule, "constant, linear or cosine");
  option(sub, *t, "--label-smoothing", &train::TrainOptions::label_smoothing, "Cross-entropy label smoothing");
  option(sub, *t, "--clip-grad", &train::TrainOptions::clip_grad, "Global gradient-norm clipping (0: off)");
  option(sub, *t, "--drop-path", &train::TrainOptions::drop_path, "CvT: the last stage's drop-path rate");
  option(sub, *t, "--val-fraction", &train::TrainOptions::val_fraction, "Stratified validation share of Training");
  option(sub, *t, "--image-size", &train::TrainOptions::image_size, "Input resolution");
  flag(sub, *t, "--static-augment", &train::TrainOptions::static_augment,
       "One fixed augmented copy per image, made once (the study's mistake; for comparison)");
  option(sub, *t, "--rotation", &train::TrainOptions::rotation, "Augmentation: random rotation within ± degrees");
  option(sub, *t, "--crop-scale-min", &train::TrainOptions::crop_scale_min,
         "Augmentation: the random resized crop's smallest share of the image area");
  option(sub, *t, "--brightness", &train::TrainOptions::brightness, "Augmentation: brightness jitter");
  option(sub, *t, "--contrast", &train::TrainOptions::contrast, "Augmentation: contrast jitter");
  option(sub, *t, "--vflip", &train::TrainOptions::p_vflip, "Augmentation: vertical flip probability");
  option(sub, *t, "--max-train-samples", &train::TrainOptions::max_train_samples, "Train on a stratified subset");
  option(sub, *t, "--seed", &train::TrainOptions::seed, "Seed of the split, init, order, augmentation, drop path");
  option(sub, *t, "--device", &train::TrainOptions::device, "cuda or cpu (default: cuda when present)");
  option(sub, *t, "--precision", &train::TrainOptions::precision, "fp32 or bf16");
  option(sub, *t, "--workers", &train::TrainOptions::workers, "Loader threads (0: all cores)");
  option(sub, *t, "--out", &train::TrainOptions::out, "Run directory (checkpoints, metrics.jsonl, report.html)");
  option(sub, *t, "--resume", &train::TrainOptions::resume, "Continue the run in this directory from its last checkpoint");
  option(sub, *t, "--log-every", &train::TrainOptions::log_every, "Steps between metrics.jsonl step lines");
  CLI::Option* no_progress = sub->add_flag("--no-progress")->description("No progress bar");
  t->overrides.emplace_back(no_progress, [](train::TrainOptions& o) { o.progress = false; });
  option(sub, *t, "--halt-after-steps", &train::TrainOptions::halt_after_steps,
         "Testing aid: exit abruptly after N steps, as if killed")->group("");
  sub->callback([t] { run_train(*t); });
}

}  // namespace tessera::cli
