// `tessera report RUN_DIR`: rebuild a training run's report.html and confusion_matrix.png from the files in
// its folder (any time: during training, after it, or after it was killed).
#include <filesystem>
#include <iostream>
#include <stdexcept>

#include "tools/cli.h"
#include "train/report.h"

namespace tessera::cli {

namespace {

struct ReportOptions {
  std::string run_dir;
};

void run_report(const ReportOptions& o) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(o.run_dir)) throw std::runtime_error("report: " + o.run_dir + " is not a folder");
  train::write_report(o.run_dir);
  const fs::path dir(o.run_dir);
  std::cout << (dir / "report.html").string() << "\n";
  if (fs::exists(dir / "eval_Testing.json")) std::cout << (dir / "confusion_matrix.png").string() << "\n";
}

}  // namespace

void add_report(CLI::App& app) {
  auto o = std::make_shared<ReportOptions>();
  CLI::App* sub = app.add_subcommand(
      "report", "Write RUN_DIR/report.html (one offline page: curves, Testing results, images) and confusion_matrix.png");
  sub->add_option("run_dir", o->run_dir, "A training run's --out folder (run.json, metrics.jsonl, eval_Testing.json)")
      ->required();
  sub->callback([o] { run_report(*o); });
}

}  // namespace tessera::cli
