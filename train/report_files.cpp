// Reading a run folder's files for the report (see report_files.h).
#include "train/report_files.h"

#include <filesystem>
#include <stdexcept>
#include <string_view>

#include "engine/core/fileio.h"

namespace tessera::train {

using json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

ClassMetrics class_metrics(const json& j) {
  return {j.at("precision").get<double>(), j.at("recall").get<double>(), j.at("f1").get<double>(),
          j.at("support").get<int64_t>()};
}

}  // namespace

const json& field(const json& j, const char* key) {
  static const json none;
  if (!j.is_object()) return none;
  auto it = j.find(key);
  return it == j.end() ? none : *it;
}

std::string text_of(const json& j) {
  if (j.is_null()) return "—";
  return j.is_string() ? j.get<std::string>() : j.dump();
}

double field_number(const json& j, const char* key) {
  const json& v = field(j, key);
  return v.is_number() ? v.get<double>() : NAN;
}

Metrics read_metrics(const std::string& path) {
  Metrics m;
  if (!fs::exists(path)) return m;
  m.present = true;
  const std::string text = read_file(path);
  size_t pos = 0;
  for (int line_no = 1; pos < text.size(); ++line_no) {
    size_t end = text.find('\n', pos);
    const bool complete = end != std::string::npos;
    if (!complete) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto fail = [&](const std::string& why) {
      return std::runtime_error(path + " line " + std::to_string(line_no) + ": " + why);
    };
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception& e) {
      if (!complete) break;  // a run being written (or killed mid-write) may end in half a line
      throw fail("not valid JSON: " + json_error_text(e));
    }
    if (!j.is_object()) throw fail("not a JSON object");
    const std::string event = field(j, "event").is_string() ? j["event"].get<std::string>() : "";
    auto integer = [&](const char* key) {
      if (!field(j, key).is_number_integer()) throw fail(std::string("\"") + key + "\" missing or not an integer");
      return j[key].get<int64_t>();
    };
    if (event == "step") {
      const int64_t g = integer("global_step");
      m.steps.erase(m.steps.lower_bound(g), m.steps.end());
      std::erase_if(m.epochs, [&](const auto& e) { return field_number(e.second, "global_step") > double(g); });
      m.steps[g] = std::move(j);
    } else if (event == "epoch") {
      const int64_t e = integer("epoch");
      m.epochs.erase(m.epochs.lower_bound(e), m.epochs.end());
      m.epochs[e] = std::move(j);
    }  // other events are not charted
  }
  return m;
}

Eval read_eval(const std::string& path) {
  const json j = read_json(path);
  Eval e;
  try {
    e.checkpoint = text_of(field(j, "checkpoint"));
    e.classes = j.at("classes").get<std::vector<std::string>>();
    e.accuracy = j.at("accuracy").get<double>();
    e.total = j.at("total").get<int64_t>();
    for (const json& c : j.at("per_class")) e.per_class.push_back(class_metrics(c));
    e.macro = class_metrics(j.at("macro_avg"));
    e.weighted = class_metrics(j.at("weighted_avg"));
    e.confusion = j.at("confusion_matrix").get<std::vector<std::vector<int64_t>>>();
    e.novel = field(j, "novel");
    e.loss = field_number(j, "loss");
    if (field(j, "skipped").is_number_integer()) e.skipped = j["skipped"].get<int64_t>();
    const int n = int(e.classes.size());
    for (const json& p : field(j, "predictions")) {
      Prediction q{p.at("path").get<std::string>(), p.at("label").get<int>(), p.at("pred").get<int>()};
      if (q.label < 0 || q.label >= n || q.pred < 0 || q.pred >= n)
        throw std::runtime_error("prediction for " + q.path + " has a label outside the " + std::to_string(n) + " classes");
      const json& probs = field(p, "probs");
      if (probs.is_array() && size_t(q.pred) < probs.size() && probs[size_t(q.pred)].is_number())
        q.prob = probs[size_t(q.pred)].get<double>();
      q.novel = field(p, "novel").is_boolean() && p["novel"].get<bool>();
      e.predictions.push_back(std::move(q));
    }
  } catch (const json::exception& ex) {
    throw std::runtime_error(path + ": " + json_error_text(ex));
  } catch (const std::runtime_error& ex) {
    throw std::runtime_error(path + ": " + ex.what());
  }
  const size_t n = e.classes.size();
  bool square = e.confusion.size() == n;
  for (const auto& row : e.confusion) square = square && row.size() == n;
  if (n == 0 || !square || e.per_class.size() != n)
    throw std::runtime_error(path + ": confusion_matrix and per_class must have one row per class (" +
                             std::to_string(n) + " classes)");
  return e;
}

std::vector<size_t> shown_predictions(const Eval& e, int per_kind) {
  std::vector<size_t> out;
  for (size_t c = 0; c < e.classes.size(); ++c)
    for (const bool right : {true, false}) {
      int shown = 0;
      for (size_t i = 0; i < e.predictions.size() && shown < per_kind; ++i) {
        const Prediction& p = e.predictions[i];
        if (size_t(p.label) == c && (p.label == p.pred) == right) out.push_back(i), ++shown;
      }
    }
  return out;
}

}  // namespace tessera::train
