// `tessera eval`: a checkpoint on a labelled split — accuracy, scikit-learn's per-class report, the
// confusion matrix and the accuracy on the audit's novel subset.
#include <algorithm>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <set>

#include "data/dataset.h"
#include "engine/core/fileio.h"
#include "tools/cli.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace tessera::cli {

namespace {

struct EvalCli {
  std::string checkpoint, data, split = "Testing", novel, device;
  int64_t batch_size = 64;
  int workers = 0;
  bool json = false;
  bool tta = false;
};

void run_eval(const EvalCli& o) {
  namespace fs = std::filesystem;
  if (o.batch_size < 1) throw std::runtime_error("eval: --batch-size must be at least 1");
  const Device device = train::resolve_device(train::parse_device(o.device), std::cerr);
  const std::string dir = train::resolve_checkpoint(o.checkpoint);
  auto model = models::load_model(dir);
  model->to(device);
  const ProcessorConfig processor = train::checkpoint_processor(dir, model->config());

  // The split: ROOT/<split>/<class> of a split layout, or a flat ROOT/<class> when --split is "".
  const fs::path split_root = o.split.empty() ? fs::path(o.data) : fs::path(o.data) / o.split;
  if (!fs::is_directory(split_root))
    throw std::runtime_error("eval: " + split_root.string() + " is not a folder (--data ROOT --split NAME)");
  // Labels by name: each class folder is looked up in the model's id2label, so a split missing a class
  // keeps every other class's label (format_eval then says "no images of class X").
  const std::vector<std::string> names = std::visit([](const auto& c) { return c.id2label; }, model->config());
  const DatasetSplit split = scan_by_name(split_root.string(), names, "the model in " + dir);
  // A kept ImageNet head's outputs past the data's classes carry transformers' placeholder names (LABEL_i):
  // counted under "(other)" rather than listed one by one.
  int64_t used = 0;
  for (const Sample& s : split.samples) used = std::max(used, s.label + 1);
  std::vector<std::string> classes = names;
  while (int64_t(classes.size()) > used && classes.back() == "LABEL_" + std::to_string(classes.size() - 1))
    classes.pop_back();

  // The novel list: --novel, else the one a training run wrote beside its checkpoints, else the audit's —
  // used only when it was made for exactly these images (its fingerprint is this split's).
  std::string novel_path = o.novel;
  if (novel_path.empty()) {
    novel_path = "audit/novel_testing.txt";
    for (const fs::path& run : {fs::path(o.checkpoint), fs::path(dir).parent_path()})
      if (fs::exists(run / "novel_testing.txt")) {
        novel_path = (run / "novel_testing.txt").string();
        break;
      }
  }
  std::optional<std::set<std::string>> novel;
  std::string novel_note;  // why there is no novel-subset accuracy
  if (auto list = train::load_novel_list(novel_path)) {
    const std::string here = fingerprint(split, split_root.string());
    if (list->fingerprint == here) {
      novel = std::move(list->paths);
    } else {
      novel_note = novel_path + " was made for other images (" +
                   (list->fingerprint.empty() ? std::string("it names no data fingerprint")
                                              : "data fingerprint " + list->fingerprint.substr(0, 12) + "…") +
                   ", while " + split_root.string() + " has " + here.substr(0, 12) + "…)";
      if (!o.novel.empty()) throw std::runtime_error("eval: --novel " + novel_note);
    }
  } else {
    novel_note = novel_path + " does not exist";
  }
  train::EvalOptions eo;
  eo.batch_size = o.batch_size;
  eo.workers = o.workers;
  eo.device = device;
  eo.novel = novel ? &*novel : nullptr;
  eo.root = o.data;
  // Mirroring as the run that made the checkpoint evaluated (its run.json), or as asked.
  eo.tta_hflip = o.tta;
  if (const fs::path run_json = fs::path(dir).parent_path() / "run.json"; !o.tta && fs::exists(run_json))
    eo.tta_hflip = read_json(run_json.string()).at("options").value("tta", false);
  train::EvalResult r = train::evaluate(*model, split.samples, classes, processor, eo);
  if (o.json) {
    std::cout << dump_json(train::eval_to_json(r, o.split, dir, novel ? novel_path : ""), 2) << "\n";
    return;
  }
  std::cout << "checkpoint " << dir << "\n" << train::format_eval(r, o.split.empty() ? o.data : o.split);
  if (!novel)
    std::cout << "\n(no novel-subset accuracy: " << novel_note << "; `tessera data audit " << o.data
              << "` writes a list for this data)\n";
}

}  // namespace

void add_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCli>();
  CLI::App* sub = app.add_subcommand("eval", "Evaluate a checkpoint on a labelled split: accuracy, per-class report, confusion matrix");
  sub->add_option("--checkpoint", o->checkpoint, "A run directory (its best checkpoint) or a checkpoint directory")->required();
  sub->add_option("--data", o->data, "Data root (with the split's folder inside)")->required();
  sub->add_option("--split", o->split, "Split folder under ROOT (\"\" for a flat ROOT/<class>)")->capture_default_str();
  sub->add_option("--novel", o->novel,
                  "The novel-subset list (paths relative to ROOT); default: the run's novel_testing.txt, else "
                  "audit/novel_testing.txt");
  sub->add_option("--batch-size", o->batch_size, "Images per forward pass")->capture_default_str();
  sub->add_option("--workers", o->workers, "Loader threads (0: all cores)");
  sub->add_option("--device", o->device, "cuda or cpu (default: cuda when present and verified)");
  sub->add_flag("--tta", o->tta,
                "Average each image's and its mirror image's probabilities (default: as the checkpoint's run did)");
  sub->add_flag("--json", o->json, "Print one JSON object (accuracy, per_class, confusion_matrix, novel, predictions)");
  sub->callback([o] { run_eval(*o); });
}

}  // namespace tessera::cli
