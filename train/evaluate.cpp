#include "train/evaluate.h"

#include <filesystem>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "engine/core/fileio.h"
#include "engine/ops.h"

namespace tessera::train {

namespace fs = std::filesystem;

EvalResult evaluate(models::Model& model, const std::vector<Sample>& samples,
                    const std::vector<std::string>& classes, const ProcessorConfig& processor,
                    const EvalOptions& options) {
  const int64_t C = int64_t(classes.size());
  const int64_t outputs = model.num_labels();
  if (outputs < C)
    throw std::invalid_argument("evaluate: the model has " + std::to_string(outputs) + " outputs but the data set " +
                                std::to_string(C) + " classes");
  EvalResult r;
  r.classes = classes;
  if (outputs > C) r.classes.push_back("(other)");

  LoaderConfig lc;
  lc.processor = processor;
  lc.batch_size = options.batch_size;
  lc.shuffle = false;
  lc.num_workers = options.workers;
  lc.image_limits = options.image_limits;
  lc.prepare = options.prepare;
  DataLoader loader(samples, outputs, lc);
  loader.start_epoch(0);

  NoGradGuard no_grad;
  Generator unused(0);  // eval mode draws nothing
  double loss_sum = 0;
  Tensor mirror;  // i64 [W]: W-1, ..., 0 on the device, for the mirror images
  while (auto batch = loader.next()) {
    const int64_t n = batch->size();
    const Tensor images = batch->images.to(options.device);
    Tensor logits = model.forward(images, /*training=*/false, unused);
    if (options.tta_hflip) {
      const int64_t W = images.size(3);
      if (!mirror.defined()) {
        std::vector<int64_t> idx(static_cast<size_t>(W));
        for (int64_t x = 0; x < W; ++x) idx[size_t(x)] = W - 1 - x;
        mirror = Tensor::from(idx, {W}).to(options.device);
      }
      const Tensor mirrored = model.forward(index_select(images, 3, mirror), /*training=*/false, unused);
      // log of the mean probability: softmax gives back the mean, and cross_entropy its log loss
      logits = log(mul(add(softmax(logits, -1), softmax(mirrored, -1)), 0.5));
    }
    Tensor labels = batch->labels.to(options.device);
    loss_sum += cross_entropy(logits, labels).item() * double(n);
    Tensor probs = softmax(logits.to(DType::f64), -1).to(Device::CPU);
    std::vector<double> p = probs.to_vector<double>();
    for (int64_t row = 0; row < n; ++row) {
      const int64_t i = batch->indices[size_t(row)];
      const double* pr = p.data() + row * outputs;
      int64_t best = 0;
      for (int64_t c = 1; c < outputs; ++c)
        if (pr[c] > pr[best]) best = c;  // the first maximum, as argmax
      r.paths.push_back(samples[size_t(i)].path);
      r.labels.push_back(samples[size_t(i)].label);
      r.preds.push_back(std::min(best, C));  // C: "(other)"
      r.probs.emplace_back(pr, pr + C);
    }
  }
  r.skipped = loader.skipped();
  if (r.labels.empty()) throw std::runtime_error("evaluate: none of the " + std::to_string(samples.size()) +
                                                 " images could be read");
  r.loss = loss_sum / double(r.labels.size());
  r.report = classification_report(r.labels, r.preds, r.classes);

  if (options.novel) {
    int64_t total = 0, correct = 0;
    r.novel_recall_support.assign(size_t(C), 0);
    r.novel_recall_correct.assign(size_t(C), 0);
    for (size_t k = 0; k < r.paths.size(); ++k) {
      const bool novel = options.novel->count(relative_to(r.paths[k], options.root)) > 0;
      r.is_novel.push_back(novel);
      if (!novel) continue;
      const bool ok = r.preds[k] == r.labels[k];
      ++total, correct += ok;
      ++r.novel_recall_support[size_t(r.labels[k])];
      r.novel_recall_correct[size_t(r.labels[k])] += ok;
    }
    r.novel_total = total;
    r.novel_correct = correct;
  }
  return r;
}

namespace {

nlohmann::json metrics_json(const ClassMetrics& m) {
  return {{"precision", m.precision}, {"recall", m.recall}, {"f1", m.f1}, {"support", m.support}};
}

}  // namespace

nlohmann::json eval_to_json(const EvalResult& r, const std::string& split, const std::string& checkpoint,
                            const std::string& novel_list) {
  using J = nlohmann::json;
  J per_class = J::array();
  for (size_t c = 0; c < r.classes.size(); ++c) {
    J m = metrics_json(r.report.per_class[c]);
    m["class"] = r.classes[c];
    per_class.push_back(m);
  }
  J novel = nullptr;
  if (r.novel_total) {
    J recall = J::array();
    for (size_t c = 0; c < r.novel_recall_support.size(); ++c)
      recall.push_back(r.novel_recall_support[c] ? J(double(r.novel_recall_correct[c]) / double(r.novel_recall_support[c]))
                                                 : J(nullptr));
    novel = {{"accuracy", *r.novel_total ? double(*r.novel_correct) / double(*r.novel_total) : 0.0},
             {"total", *r.novel_total}, {"correct", *r.novel_correct}, {"per_class_recall", recall},
             {"list", novel_list}};
  }
  J predictions = J::array();
  for (size_t k = 0; k < r.paths.size(); ++k) {
    J p = {{"path", r.paths[k]}, {"label", r.labels[k]}, {"pred", r.preds[k]}, {"probs", r.probs[k]}};
    if (!r.is_novel.empty()) p["novel"] = bool(r.is_novel[k]);
    predictions.push_back(p);
  }
  return {{"split", split},
          {"checkpoint", checkpoint},
          {"classes", r.classes},
          {"accuracy", r.report.accuracy},
          {"total", r.report.total},
          {"loss", r.loss},
          {"skipped", r.skipped},
          {"per_class", per_class},
          {"macro_avg", metrics_json(r.report.macro)},
          {"weighted_avg", metrics_json(r.report.weighted)},
          {"confusion_matrix", r.report.confusion},
          {"novel", novel},
          {"predictions", predictions}};
}

std::string format_eval(const EvalResult& r, const std::string& split) {
  std::ostringstream s;
  char line[256];
  std::snprintf(line, sizeof line, "%s: accuracy %.4f (%lld images", split.c_str(), r.report.accuracy,
                static_cast<long long>(r.report.total));
  s << line;
  if (r.skipped) s << ", " << r.skipped << " unreadable skipped";
  s << ")";
  if (r.novel_total) {
    std::snprintf(line, sizeof line, "; novel subset %.4f (%lld of %lld)",
                  *r.novel_total ? double(*r.novel_correct) / double(*r.novel_total) : 0.0,
                  static_cast<long long>(*r.novel_correct), static_cast<long long>(*r.novel_total));
    s << line;
  }
  s << "\n";
  // A class without images (its folder missing from the split) still has its row, keyed by the model's
  // classes; say why it is empty rather than let a row of zeros pass for a result.
  for (size_t c = 0; c < r.classes.size() && c < r.report.per_class.size(); ++c)
    if (r.report.per_class[c].support == 0 && r.classes[c] != "(other)") s << "no images of class " << r.classes[c] << "\n";
  if (r.novel_total && *r.novel_total) {
    s << "novel-subset recall:";
    for (size_t c = 0; c < r.novel_recall_support.size(); ++c) {
      s << " " << r.classes[c] << " ";
      if (r.novel_recall_support[c] == 0) {
        s << "- (0)";
        continue;
      }
      std::snprintf(line, sizeof line, "%.4f (%lld)", double(r.novel_recall_correct[c]) / double(r.novel_recall_support[c]),
                    static_cast<long long>(r.novel_recall_support[c]));
      s << line;
    }
    s << "\n";
  }
  s << "\n" << format_report(r.report, 4) << "\nconfusion matrix (rows: true, columns: predicted)\n";
  size_t w = 6;
  for (const auto& c : r.classes) w = std::max(w, c.size() + 2);
  s << std::string(w, ' ');
  for (size_t c = 0; c < r.classes.size(); ++c) s << std::setw(8) << c;
  s << "\n";
  for (size_t t = 0; t < r.classes.size(); ++t) {
    s << std::to_string(t) << " " << r.classes[t] << std::string(w - r.classes[t].size() - 2, ' ');
    for (int64_t v : r.report.confusion[t]) s << std::setw(8) << v;
    s << "\n";
  }
  return s.str();
}

constexpr std::string_view kNovelHeader = "# Testing fingerprint ";

std::string novel_list_text(const std::string& testing_fingerprint, const std::set<std::string>& paths) {
  std::string text = std::string(kNovelHeader) + testing_fingerprint + "\n";
  for (const std::string& p : paths) text += p + "\n";
  return text;
}

std::optional<NovelList> load_novel_list(const std::string& path) {
  if (!fs::exists(path)) return std::nullopt;
  std::istringstream in(read_file(path));
  NovelList out;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(kNovelHeader, 0) == 0 && out.paths.empty()) out.fingerprint = line.substr(kNovelHeader.size());
    else if (!line.empty()) out.paths.insert(line);
  }
  return out;
}

std::string relative_to(const std::string& path, const std::string& root) {
  std::error_code ec;
  fs::path rel = fs::relative(fs::absolute(path, ec), fs::absolute(root, ec), ec);
  if (ec || rel.empty() || *rel.begin() == "..") return path;
  return rel.generic_string();
}

}  // namespace tessera::train
