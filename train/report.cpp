// The training report (see report.h), in pieces: report_files reads the run folder, report_page assembles
// the HTML (with report_charts' SVG and report_text's escaping and base64), report_figures draws the PNG.
#include "train/report.h"

#include <filesystem>
#include <iostream>
#include <optional>
#include <stdexcept>

#include "engine/core/fileio.h"
#include "train/report_attention.h"
#include "train/report_figures.h"
#include "train/report_files.h"
#include "train/report_page.h"

namespace tessera::train {

void write_report(const std::string& run_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(run_dir);
  const std::string run_path = (dir / "run.json").string();
  if (!fs::is_regular_file(run_path))
    throw std::runtime_error(run_path + ": not found (is " + run_dir + " a training run's --out folder?)");
  const nlohmann::json run = read_json(run_path);
  if (!run.is_object()) throw std::runtime_error(run_path + ": not a JSON object");
  const Metrics metrics = read_metrics((dir / "metrics.jsonl").string());
  std::optional<Eval> eval;
  const std::string eval_path = (dir / "eval_Testing.json").string();
  if (fs::exists(eval_path)) eval = read_eval(eval_path);
  const std::optional<std::string> png = eval ? confusion_matrix_png(*eval) : std::nullopt;
  if (eval && !png) std::cerr << "report: no confusion_matrix.png: " << figures_unavailable() << "\n";
  std::optional<ReportAttention> attention;
  if (eval) attention = report_attention(*eval, run_dir);
  const std::string html = report_page(run, metrics, eval, png, run_dir, attention ? &*attention : nullptr);
  if (png) write_file_atomic((dir / "confusion_matrix.png").string(), *png);
  write_file_atomic((dir / "report.html").string(), html);
}

}  // namespace tessera::train
