#include "train/metrics.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace tessera {

ClassificationReport classification_report(const std::vector<int64_t>& y_true, const std::vector<int64_t>& y_pred,
                                           const std::vector<std::string>& classes) {
  if (y_true.size() != y_pred.size())
    throw std::invalid_argument("classification_report: " + std::to_string(y_true.size()) + " labels but " +
                                std::to_string(y_pred.size()) + " predictions");
  const int64_t K = int64_t(classes.size());
  if (K == 0) throw std::invalid_argument("classification_report: no classes");
  ClassificationReport r;
  r.classes = classes;
  r.confusion.assign(size_t(K), std::vector<int64_t>(size_t(K), 0));
  for (size_t i = 0; i < y_true.size(); ++i) {
    for (int64_t v : {y_true[i], y_pred[i]})
      if (v < 0 || v >= K)
        throw std::invalid_argument("classification_report: label " + std::to_string(v) + " at position " +
                                    std::to_string(i) + " is outside [0, " + std::to_string(K) + ")");
    ++r.confusion[size_t(y_true[i])][size_t(y_pred[i])];
  }
  r.total = int64_t(y_true.size());
  int64_t correct = 0;
  auto ratio = [](double a, double b) { return b > 0 ? a / b : 0.0; };
  for (int64_t c = 0; c < K; ++c) {
    int64_t tp = r.confusion[size_t(c)][size_t(c)], predicted = 0, actual = 0;
    for (int64_t o = 0; o < K; ++o) {
      predicted += r.confusion[size_t(o)][size_t(c)];
      actual += r.confusion[size_t(c)][size_t(o)];
    }
    correct += tp;
    ClassMetrics m;
    m.precision = ratio(double(tp), double(predicted));
    m.recall = ratio(double(tp), double(actual));
    m.f1 = ratio(2 * m.precision * m.recall, m.precision + m.recall);
    m.support = actual;
    r.per_class.push_back(m);
    r.macro.precision += m.precision / double(K);
    r.macro.recall += m.recall / double(K);
    r.macro.f1 += m.f1 / double(K);
    double w = ratio(double(actual), double(r.total));
    r.weighted.precision += w * m.precision;
    r.weighted.recall += w * m.recall;
    r.weighted.f1 += w * m.f1;
  }
  r.macro.support = r.weighted.support = r.total;
  r.accuracy = ratio(double(correct), double(r.total));
  return r;
}

std::string format_report(const ClassificationReport& r, int digits) {
  size_t width = std::string("weighted avg").size();
  for (const auto& c : r.classes) width = std::max(width, c.size());
  const int col = std::max(digits + 2, 9);  // sklearn: every column is " {:>9}" after "{name:>width} "
  std::string out;
  char buf[512];
  auto row = [&](const std::string& name, const ClassMetrics& m) {
    std::snprintf(buf, sizeof buf, "%*s  %*.*f %*.*f %*.*f %*lld\n", int(width), name.c_str(), col, digits, m.precision,
                  col, digits, m.recall, col, digits, m.f1, col, (long long)m.support);
    out += buf;
  };
  std::snprintf(buf, sizeof buf, "%*s  %*s %*s %*s %*s\n\n", int(width), "", col, "precision", col, "recall", col,
                "f1-score", col, "support");
  out += buf;
  for (size_t c = 0; c < r.classes.size(); ++c) row(r.classes[c], r.per_class[c]);
  std::snprintf(buf, sizeof buf, "\n%*s  %*s %*s %*.*f %*lld\n", int(width), "accuracy", col, "", col, "", col, digits,
                r.accuracy, col, (long long)r.total);
  out += buf;
  row("macro avg", r.macro);
  row("weighted avg", r.weighted);
  return out;
}

std::vector<double> balanced_class_weights(const std::vector<int64_t>& counts) {
  int64_t total = 0;
  for (int64_t n : counts) total += n;
  std::vector<double> w(counts.size(), 0.0);
  for (size_t c = 0; c < counts.size(); ++c)
    if (counts[c] > 0) w[c] = double(total) / (double(counts.size()) * double(counts[c]));
  return w;
}

}  // namespace tessera
