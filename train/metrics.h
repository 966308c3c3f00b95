// Classification metrics as scikit-learn's classification_report and confusion_matrix define them:
// per class precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2PR/(P+R), each 0 where its denominator is 0
// (sklearn's zero_division default, without the warning); macro average = unweighted mean over all classes;
// weighted average = mean weighted by support (true count). Accuracy = correct / total.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace tessera {

struct ClassMetrics { double precision = 0, recall = 0, f1 = 0; int64_t support = 0; };

struct ClassificationReport {
  std::vector<std::string> classes;
  std::vector<std::vector<int64_t>> confusion;  // [true class][predicted class]
  std::vector<ClassMetrics> per_class;
  ClassMetrics macro, weighted;                 // support = total
  double accuracy = 0;
  int64_t total = 0;
};

// Labels must lie in [0, classes.size()); throws naming the offending position otherwise.
ClassificationReport classification_report(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                                           const std::vector<std::string>& classes);
// The report as sklearn prints it, with `digits` decimals.
std::string format_report(const ClassificationReport& r, int digits = 4);

// Loss weights that make every class count equally (scikit-learn's class_weight="balanced"): class c
// weighs N / (C · n_c) for N samples in C classes, n_c of class c (0 for a class with no samples).
std::vector<double> balanced_class_weights(const std::vector<int64_t>& counts);

}  // namespace tessera
