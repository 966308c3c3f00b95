// Evaluating a classifier on a list of labelled images: the loss, scikit-learn's classification report,
// the confusion matrix, every prediction, and the accuracy on the "novel" subset (images with no
// near-duplicate in Training, listed by `tessera data audit`).
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/dataset.h"
#include "data/loader.h"
#include "train/metrics.h"
#include "models/model.h"

namespace tessera::train {

struct EvalResult {
  // The data set's classes; when the model has more outputs than classes (a kept 1000-class ImageNet
  // head), predictions outside them are counted under one extra class "(other)", so accuracy is exact
  // and the report shows how often that happened.
  std::vector<std::string> classes;
  ClassificationReport report;
  double loss = 0;  // mean cross-entropy over the model's outputs (no label smoothing)
  std::vector<std::string> paths;
  std::vector<int64_t> labels, preds;         // per evaluated image, in sample order
  std::vector<std::vector<double>> probs;     // softmax over the data set's classes' logits
  int64_t skipped = 0;                        // unreadable files
  // Novel subset (when a list was given): images of this evaluation whose path is in it.
  std::optional<int64_t> novel_total, novel_correct;
  std::vector<int64_t> novel_recall_support, novel_recall_correct;  // per class
  std::vector<bool> is_novel;
};

struct EvalOptions {
  int64_t batch_size = 64;
  int workers = 0;
  ImageLimits image_limits;  // LoaderConfig::image_limits
  Device device = Device::CPU;
  const std::set<std::string>* novel = nullptr;  // paths relative to the data root ('/'-separated)
  std::string root;                              // the data root the novel paths are relative to
  std::function<void(Image&, int64_t)> prepare;  // LoaderConfig::prepare (the study's fixed resize)
  // Test-time augmentation: the probabilities are the mean of the image's and its left-right mirror
  // image's (the loss is then the cross-entropy of that mean).
  bool tta_hflip = false;
};

// Runs the model in eval mode (no augmentation, `processor` only) over `samples`.
EvalResult evaluate(models::Model& model, const std::vector<Sample>& samples,
                    const std::vector<std::string>& classes, const ProcessorConfig& processor,
                    const EvalOptions& options);

// The object `tessera eval --json` prints (the eval_Testing.json of train/report.h).
nlohmann::json eval_to_json(const EvalResult& r, const std::string& split, const std::string& checkpoint,
                            const std::string& novel_list);
// Accuracy, the per-class report and the confusion matrix as text.
std::string format_eval(const EvalResult& r, const std::string& split);

// The novel list ("novel_testing.txt"): a first line "# Testing fingerprint <hex>" naming the Testing folder
// it was computed for (data/dataset.h's fingerprint), then one path per line relative to the data root. A
// list is used only on the data it names: a list from another data set, or a changed one, would silently
// mark the wrong images novel.
struct NovelList {
  std::string fingerprint;  // "" in a list without the first line (an older tessera's): never matches
  std::set<std::string> paths;
};
std::string novel_list_text(const std::string& testing_fingerprint, const std::set<std::string>& paths);
// nullopt when the file does not exist; throws FileError when it exists but cannot be read.
std::optional<NovelList> load_novel_list(const std::string& path);
// `path` relative to `root` with '/' separators (the novel list's form), or path itself when outside.
std::string relative_to(const std::string& path, const std::string& root);

}  // namespace tessera::train
