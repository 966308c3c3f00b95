// Classification metrics against scikit-learn's documented example (classification_report docs:
// y_true = [0, 1, 2, 2, 2], y_pred = [0, 0, 2, 2, 1]) and hand-derived edge cases.
#include <doctest/doctest.h>

#include <stdexcept>

#include "train/metrics.h"

using namespace tessera;

TEST_CASE("classification report matches scikit-learn's example") {
  auto r = classification_report({0, 1, 2, 2, 2}, {0, 0, 2, 2, 1}, {"class 0", "class 1", "class 2"});
  CHECK(r.confusion == std::vector<std::vector<int64_t>>{{1, 0, 0}, {1, 0, 0}, {0, 1, 2}});
  CHECK(r.accuracy == doctest::Approx(0.6));
  CHECK(r.per_class[0].precision == doctest::Approx(0.5));
  CHECK(r.per_class[0].recall == doctest::Approx(1.0));
  CHECK(r.per_class[0].f1 == doctest::Approx(2.0 / 3));
  CHECK(r.per_class[1].precision == 0);  // 0/1 predicted correctly
  CHECK(r.per_class[1].f1 == 0);         // P + R = 0: zero_division → 0
  CHECK(r.per_class[2].precision == doctest::Approx(1.0));
  CHECK(r.per_class[2].recall == doctest::Approx(2.0 / 3));
  CHECK(r.per_class[2].f1 == doctest::Approx(0.8));
  CHECK(r.per_class[2].support == 3);
  // sklearn prints: macro avg 0.50 0.56 0.49, weighted avg 0.70 0.60 0.61.
  CHECK(r.macro.precision == doctest::Approx(0.5));
  CHECK(r.macro.recall == doctest::Approx(5.0 / 9));
  CHECK(r.macro.f1 == doctest::Approx((2.0 / 3 + 0.8) / 3));
  CHECK(r.weighted.precision == doctest::Approx(0.7));
  CHECK(r.weighted.recall == doctest::Approx(0.6));
  CHECK(r.weighted.f1 == doctest::Approx((2.0 / 3 + 3 * 0.8) / 5));
  std::string text = format_report(r);
  CHECK(text.find("weighted avg     0.7000    0.6000    0.6133         5") != std::string::npos);
  CHECK(text.find("accuracy                         0.6000         5") != std::string::npos);
}

TEST_CASE("metrics: a class never predicted nor present, and bad labels") {
  auto r = classification_report({0, 0, 1}, {0, 1, 1}, {"a", "b", "c"});
  CHECK(r.per_class[2].support == 0);
  CHECK(r.per_class[2].f1 == 0);
  CHECK(r.macro.recall == doctest::Approx((0.5 + 1.0 + 0.0) / 3));  // absent classes count in the macro mean
  CHECK(r.weighted.recall == doctest::Approx(r.accuracy));            // weighted recall is accuracy
  CHECK_THROWS_WITH(classification_report({0, 3}, {0, 0}, {"a", "b"}), doctest::Contains("label 3 at position 1"));
  CHECK_THROWS_AS(classification_report({0}, {0, 1}, {"a", "b"}), std::invalid_argument);
}

TEST_CASE("balanced class weights: every class carries the same total weight") {
  // The reference data's train split counts (glioma, meningioma, no tumour, pituitary) and an empty class.
  const std::vector<int64_t> counts{661, 658, 316, 661, 0};
  const std::vector<double> w = balanced_class_weights(counts);
  REQUIRE(w.size() == 5);
  const double total = 661 + 658 + 316 + 661;
  for (size_t c = 0; c < 4; ++c) {
    CHECK(w[c] == doctest::Approx(total / (5.0 * double(counts[c]))).epsilon(1e-15));
    CHECK(w[c] * double(counts[c]) == doctest::Approx(total / 5.0).epsilon(1e-15));  // equal shares
  }
  CHECK(w[4] == 0.0);
  CHECK(w[2] > w[0]);  // the rarest class weighs most
}
