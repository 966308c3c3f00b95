// Reading a run folder's files for the report (their formats are in train/report.h): run.json as it is,
// metrics.jsonl as it stands after every resume, eval_Testing.json checked and typed.
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "train/metrics.h"

namespace tessera::train {

// A field for display: absent (or null, or j not an object) is an empty json, never an exception.
const nlohmann::json& field(const nlohmann::json& j, const char* key);
// The value as text: a string as it is, null as "—", anything else as JSON.
std::string text_of(const nlohmann::json& j);
// NaN when absent or null (nlohmann writes a non-finite loss as null).
double field_number(const nlohmann::json& j, const char* key);

// The metrics as they stand after every resume: a line for global step g replaces all steps from g on and
// every epoch that ended at or after g; a line for epoch e replaces epochs from e on. So the later line wins
// and a resumed run's stale tail (logged before the kill, not yet redone) disappears.
struct Metrics {
  bool present = false;  // metrics.jsonl exists
  std::map<int64_t, nlohmann::json> steps;   // by global_step
  std::map<int64_t, nlohmann::json> epochs;  // by epoch
};
// Missing file: an empty Metrics. A malformed line throws naming the file and line; a half-written last
// line (a run being written or killed) is left out.
Metrics read_metrics(const std::string& path);

struct Prediction {
  std::string path;
  int label = 0, pred = 0;
  double prob = NAN;  // of the predicted class
  bool novel = false;
};

struct Eval {
  std::string checkpoint;
  std::vector<std::string> classes;
  double accuracy = 0;
  int64_t total = 0;
  std::vector<ClassMetrics> per_class;
  ClassMetrics macro, weighted;
  std::vector<std::vector<int64_t>> confusion;  // rows: true class, columns: predicted; n x n
  nlohmann::json novel;  // null when the run had no novel list
  double loss = NAN;
  int64_t skipped = 0;   // unreadable images, left out of every number
  std::vector<Prediction> predictions;
};
// Throws naming the file when a field is missing or mistyped, or the matrix is not one row per class.
Eval read_eval(const std::string& path);
// The Testing images the report shows: for each class, up to `per_kind` correct and `per_kind` wrong
// predictions in file order, as indices into e.predictions (correct first within a class).
std::vector<size_t> shown_predictions(const Eval& e, int per_kind = 4);

}  // namespace tessera::train
