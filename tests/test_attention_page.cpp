// What `tessera attn` draws and measures (train/attention_page.h): the receptive-field centres it measures
// distances with, the per-head statistics against closed forms on hand-made probabilities, the maps,
// the bilinear upsampling, the PNGs and the page.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>

#include "engine/ops.h"
#include "engine/random.h"
#include "models/attention_maps.h"
#include "models/config.h"
#include "tests/errors.h"
#include "train/attention_page.h"

using namespace tessera;
using namespace tessera::train;
using tessera::testing::contains;
using tessera::testing::error_of;

namespace {

// Tolerance for the statistics: float64 sums of at most a few hundred terms of size ≤ ~50 (entropy terms
// ≤ ln 5, distances ≤ 50 px), each rounded at 2^-53 relative: ≲ 1e-13. 1e-12 keeps a margin; every slip of
// a centre (≥ 0.5 px), a key index or a log base moves a value by ≥ 1e-2.
constexpr double kTol = 1e-12;

// f64 (B, heads, Tq, Tk) from p(b, h, q, k).
Tensor probs_of(int64_t B, int64_t H, int64_t Tq, int64_t Tk, const std::function<double(int64_t, int64_t, int64_t, int64_t)>& p) {
  std::vector<double> v;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t q = 0; q < Tq; ++q)
        for (int64_t k = 0; k < Tk; ++k) v.push_back(p(b, h, q, k));
  return Tensor::from(v, {B, H, Tq, Tk});
}

// ViT-B/16 at 32 px: a 2 × 2 patch grid, cls first, centres 8 and 24 px.
models::AttentionLayout vit_2x2() { return models::attention_layouts(models::preset_config("vit-b16"), 32, 32)[0]; }

}  // namespace

TEST_CASE("receptive-field centres: ViT patches and CvT's query and stride-2 key grids") {
  const models::AttentionLayout v = vit_2x2();
  CHECK((v.query_origin == 8 && v.query_step == 16 && v.key_origin == 8 && v.key_step == 16));
  // CvT-13 stage 1: a 7 × 7 stride-4 padding-2 embedding puts token 0's window on pixels −2..4, centre
  // pixel 1, i.e. 1.5 in pixel coordinates; the 3 × 3 padding-1 query convolution keeps it, the stride-2 key
  // convolution doubles the step. Stages 2 and 3 (3 × 3, stride 2, padding 1) double it again each.
  const auto cvt = models::attention_layouts(models::preset_config("cvt-13"), 224, 224);
  CHECK((cvt[0].query_origin == 1.5 && cvt[0].query_step == 4 && cvt[0].key_origin == 1.5 && cvt[0].key_step == 8));
  CHECK((cvt[1].query_origin == 1.5 && cvt[1].query_step == 8 && cvt[1].key_step == 16));
  CHECK((cvt[12].query_origin == 1.5 && cvt[12].query_step == 16 && cvt[12].key_origin == 1.5 && cvt[12].key_step == 32));
}

TEST_CASE("statistics: uniform attention has entropy ln Tk and the grid's mean distance") {
  const models::AttentionLayout a = vit_2x2();  // Tq = Tk = 5, 12 heads
  AttentionStatistics s(a, {0, 3});
  s.add(probs_of(2, 12, 5, 5, [](auto...) { return 0.2; }));
  // From any patch centre the four patch keys lie at 0, 16, 16 and 16·√2 px, each with p = 0.2.
  const double distance = 0.2 * (32 + 16 * std::sqrt(2.0));
  const auto heads = s.heads();
  REQUIRE(heads.size() == 2);
  for (const auto& h : heads) {
    CHECK(std::abs(h.entropy - std::log(5.0)) < kTol);
    CHECK(std::abs(h.entropy_normalised - 1) < kTol);
    CHECK(std::abs(h.distance - distance) < kTol);
    CHECK(std::abs(h.cls_share - 0.2) < kTol);
  }
  const nlohmann::json j = s.to_json();
  CHECK(j["images"] == 2);
  CHECK(j["heads"] == nlohmann::json{0, 3});
  CHECK(std::abs(j["mean_distance_px"][1].get<double>() - distance) < kTol);
}

TEST_CASE("statistics: one-hot attention gives the known offset, no entropy, and the cls share") {
  const models::AttentionLayout a = vit_2x2();
  // Head 0: patch (r, c) looks only at (r, 1 − c), 16 px away. Head 1: half on cls, half on that patch,
  // so the distance halves (the cls key adds nothing) and the entropy is ln 2. The cls query's row (q = 0)
  // would add 0 distance and must be left out.
  auto p = [](int64_t, int64_t h, int64_t q, int64_t k) {
    if (q == 0) return k == 0 ? 1.0 : 0.0;
    const int64_t r = (q - 1) / 2, c = (q - 1) % 2, other = 1 + r * 2 + (1 - c);
    if (h == 0) return k == other ? 1.0 : 0.0;
    return k == other || k == 0 ? 0.5 : 0.0;
  };
  AttentionStatistics s(a, {0, 1});
  s.add(probs_of(1, 12, 5, 5, p));
  const auto heads = s.heads();
  CHECK(std::abs(heads[0].distance - 16) < kTol);
  CHECK(std::abs(heads[0].entropy) < kTol);
  CHECK(std::abs(heads[0].cls_share) < kTol);
  CHECK(std::abs(heads[1].distance - 8) < kTol);
  CHECK(std::abs(heads[1].entropy - std::log(2.0)) < kTol);
  CHECK(std::abs(heads[1].cls_share - 0.5) < kTol);

  // CvT-13 stage 1 at 32 px: 8 × 8 queries, 4 × 4 keys. Query (r, c) looks only at key (r/2, c/2), whose
  // centre is its own for even r and c and 4 px away per odd coordinate: mean (0 + 4 + 4 + 4·√2)/4.
  const models::AttentionLayout cvt = models::attention_layouts(models::preset_config("cvt-13"), 32, 32)[0];
  REQUIRE((cvt.query_rows == 8 && cvt.key_rows == 4 && !cvt.cls));
  AttentionStatistics t(cvt, {});
  t.add(probs_of(1, 1, 64, 16, [](int64_t, int64_t, int64_t q, int64_t k) { return k == q / 8 / 2 * 4 + q % 8 / 2 ? 1.0 : 0.0; }));
  CHECK(std::abs(t.heads()[0].distance - (2 + std::sqrt(2.0))) < kTol);
  CHECK(std::abs(t.heads()[0].cls_share) < kTol);
}

TEST_CASE("statistics: images added one at a time give the same means as all at once") {
  const models::AttentionLayout a = vit_2x2();
  auto p = [](int64_t b, int64_t h, int64_t q, int64_t k) { return 1.0 + double((b * 7 + h * 3 + q * 5 + k) % 4); };
  auto norm = [&](int64_t b, int64_t h, int64_t q, int64_t k) {
    double s = 0;
    for (int64_t j = 0; j < 5; ++j) s += p(b, h, q, j);
    return p(b, h, q, k) / s;
  };
  AttentionStatistics all(a, {}), one(a, {});
  const Tensor t = probs_of(3, 12, 5, 5, norm);
  all.add(t);
  for (int64_t b = 0; b < 3; ++b) one.add(t.slice(0, b, b + 1));
  for (size_t h = 0; h < 12; ++h) {
    CHECK(std::abs(all.heads()[h].entropy - one.heads()[h].entropy) < kTol);
    CHECK(std::abs(all.heads()[h].distance - one.heads()[h].distance) < kTol);
  }
  CHECK(std::isnan(AttentionStatistics(a, {}).heads()[0].entropy));
  CHECK(contains(error_of([&] { all.add(probs_of(1, 12, 5, 4, norm)); }), "layer 0"));
  CHECK(contains(error_of([&] { AttentionStatistics(a, {12}).add(t); }), "head 12"));
}

TEST_CASE("statistics streamed from q and k, a chunk of query rows at a time, equal those of the probabilities") {
  // Every layout kind: ViT (cls, one grid), CvT's stage 1 (no cls; 16 × 16 queries, 8 × 8 keys at 64 px)
  // and stage 3 (cls; 4 × 4 queries, 2 × 2 keys). Random f64 q and k, some heads, chunks of 1, 7 and all rows.
  const auto cvt = models::attention_layouts(models::preset_config("cvt-tiny"), 64, 64);
  for (const models::AttentionLayout& a : {vit_2x2(), cvt.front(), cvt.back()}) {
    CAPTURE(a.layer);
    const int64_t B = 2, D = 5, Tq = a.queries(), Tk = a.keys();
    Generator gen(11);
    const Tensor q = gen.normal({B, a.heads, Tq, D}, 0, 2, DType::f64), k = gen.normal({B, a.heads, Tk, D}, 0, 1, DType::f64);
    const double scale = 0.7;
    const std::vector<int64_t> heads = a.heads > 1 ? std::vector<int64_t>{a.heads - 1, 0} : std::vector<int64_t>{};
    AttentionStatistics whole(a, heads);
    whole.add(softmax(mul(matmul(q, k.transpose(-1, -2)), scale), -1));
    for (int64_t rows : {int64_t(1), int64_t(7), int64_t(4096)}) {
      CAPTURE(rows);
      AttentionStatistics streamed(a, heads);
      streamed.add_streamed(q, k, scale, rows);
      CHECK(streamed.to_json()["images"] == B);
      for (size_t h = 0; h < whole.heads().size(); ++h) {
        const auto w = whole.heads()[h], t = streamed.heads()[h];
        // entropy as lse − Σ p·s against −Σ p·ln p: both f64, terms ≤ ~10 in size: 1e-12 holds.
        CHECK(std::abs(w.entropy - t.entropy) < kTol);
        CHECK(std::abs(w.distance - t.distance) < kTol);
        CHECK(std::abs(w.cls_share - t.cls_share) < kTol);
      }
    }
  }
  AttentionStatistics s(vit_2x2(), {});
  Generator gen(1);
  const Tensor q = gen.normal({1, 12, 5, 4}, 0, 1, DType::f64), k = gen.normal({1, 12, 4, 4}, 0, 1, DType::f64);
  CHECK(contains(error_of([&] { s.add_streamed(q, k, 1.0); }), "layer 0"));
  const Tensor k5 = gen.normal({1, 12, 5, 4}, 0, 1, DType::f64);
  CHECK(contains(error_of([&] { s.add_streamed(q, k5, 1.0, 0); }), "rows per chunk must be at least 1"));
  CHECK(contains(error_of([&] { AttentionStatistics(vit_2x2(), {12}).add_streamed(q, k5, 1.0); }), "head 12 does not exist"));
  // Large scores (a peaked head): the entropy from the shifted scores stays exact in f32 too.
  AttentionStatistics peaked64(vit_2x2(), {}), peaked32(vit_2x2(), {});
  peaked64.add_streamed(mul(q, 40.0), k5, 1.0);
  peaked32.add_streamed(mul(q, 40.0).to(DType::f32), k5.to(DType::f32), 1.0);
  for (size_t h = 0; h < 12; ++h)  // f32: scores up to ~400 rounded at 2^-24 relative: ~3e-5 on exp's argument
    CHECK(std::abs(peaked64.heads()[h].entropy - peaked32.heads()[h].entropy) < 1e-4);
}

TEST_CASE("statistics: the sums of two parts merged equal those of the whole") {
  const models::AttentionLayout a = vit_2x2();
  Generator gen(5);
  const Tensor q = gen.normal({3, 12, 5, 4}, 0, 1, DType::f64), k = gen.normal({3, 12, 5, 4}, 0, 1, DType::f64);
  AttentionStatistics whole(a, {3, 7}), first(a, {3, 7}), rest(a, {3, 7});
  whole.add_streamed(q, k, 0.5);
  first.add_streamed(q.slice(0, 0, 1), k.slice(0, 0, 1), 0.5);
  rest.add_streamed(q.slice(0, 1, 3), k.slice(0, 1, 3), 0.5);
  first.merge(rest);
  CHECK(first.to_json()["images"] == 3);
  for (size_t h = 0; h < 2; ++h) {
    CHECK(std::abs(first.heads()[h].entropy - whole.heads()[h].entropy) < kTol);
    CHECK(std::abs(first.heads()[h].distance - whole.heads()[h].distance) < kTol);
    CHECK(std::abs(first.heads()[h].cls_share - whole.heads()[h].cls_share) < kTol);
  }
  CHECK(contains(error_of([&] { first.merge(AttentionStatistics(a, {3})); }), "other heads"));
}

TEST_CASE("maps: the cls or a query's row, and the attention each key receives") {
  const models::AttentionLayout a = vit_2x2();
  // p[h, q, k] = (h + 1)·(k + 1) + q, any positive numbers: the maps are linear in them.
  const Tensor p = probs_of(1, 12, 5, 5, [](int64_t, int64_t h, int64_t q, int64_t k) { return double((h + 1) * (k + 1) + q); })
                       .select(0, 0);
  const HeatMap cls = query_map(p, a, {0, 2}, 0);  // heads 1 and 3 scale: mean factor 2
  REQUIRE((cls.rows == 2 && cls.cols == 2 && cls.origin == 8 && cls.step == 16));
  CHECK(cls.values == std::vector<double>{4, 6, 8, 10});  // 2·(k + 1) for k = 1..4
  CHECK(query_map(p, a, {1}, 3).values == std::vector<double>{7, 9, 11, 13});  // 2·(k + 1) + 3
  // Σ_q over 5 queries of (k + 1) + q: 5·(k + 1) + 10, head 0.
  CHECK(key_map(p, a, {0}).values == std::vector<double>{20, 25, 30, 35});
  CHECK(contains(error_of([&] { query_map(p, a, {}, 5); }), "query 5"));
}

TEST_CASE("upsample: bilinear between the cell centres, constant beyond them") {
  HeatMap m{2, 2, 8, 16, {0, 1, 2, 3}};
  const std::vector<double> v = upsample(m, 32, 32);
  CHECK(v[0] == 0);               // pixel (0, 0), before the first centre
  CHECK(v[32 * 32 - 1] == 3);      // pixel (31, 31), beyond the last
  // Pixel (15, 31): row centre 15.5 is (15.5 − 8)/16 = 0.46875 of the way from row 0 to row 1; column 31 is
  // beyond column 1's centre. 1 + 2·0.46875, exact in binary.
  CHECK(v[15 * 32 + 31] == 1.9375);
  // Enlarged 2×: display pixel 31's centre is input coordinate 15.75, (15.75 − 8)/16 = 0.484375.
  const std::vector<double> w = upsample(m, 64, 64, 2);
  CHECK(w[31 * 64 + 63] == 1 + 2 * 0.484375);
  CHECK(contains(error_of([] { upsample(HeatMap{2, 2, 8, 16, {1, 2, 3}}, 4, 4); }), "3 values for a 2x2 grid"));
}

TEST_CASE("input image, viridis and the PNGs") {
  const InputImage im = input_image(Tensor::from(std::vector<double>{-1, 0, 1, 3}, {1, 1, 2, 2}), 0);
  REQUIRE((im.height == 2 && im.width == 2));
  CHECK(im.rgb == std::vector<double>{0, 0, 0, .25, .25, .25, .5, .5, .5, 1, 1, 1});
  CHECK((viridis(0).r == 68 && viridis(0).g == 1 && viridis(0).b == 84));
  CHECK((viridis(1).r == 253 && viridis(1).g == 231 && viridis(1).b == 37));
  CHECK((viridis(NAN).r == 68 && viridis(2).b == 37));
  // Drawn exactly when this build draws figures, and then a PNG.
  const auto png = heat_map_png(im, HeatMap{1, 1, 1, 2, {0.5}}, "one cell");
  const auto input = input_png(im, "input");
  CHECK(png.has_value() == figures_unavailable().empty());
  CHECK(input.has_value() == figures_unavailable().empty());
  if (png) {
    CHECK(png->rfind("\x89PNG\r\n\x1a\n", 0) == 0);
  }
  CHECK(contains(error_of([&] { heat_map_png(im, HeatMap{2, 2, 1, 2, {0.5}}, "bad"); }), "1 values"));
}

TEST_CASE("page: images, their figures and the statistics table") {
  const models::AttentionLayout a = vit_2x2();
  AttentionStatistics s(a, {});
  s.add(probs_of(1, 12, 5, 5, [](auto...) { return 0.2; }));
  const nlohmann::json meta = {{"model", {{"type", "vit"}, {"source", "w.safetensors"}}},
                               {"images", {"a<b>.png"}},
                               {"layers", {{{"layer", 0}, {"stage", 0}, {"statistics", s.to_json()}}}}};
  ImageSection im{"a<b>.png", "tabby", 0.75, {"input", "data:image/png;base64,AAAA"}, {}};
  im.rows.push_back({"layer 0", "p[cls, k]", {{"head 0", "png/0_layer0_head0.png"}, {"mean", ""}}});
  const std::string page = attention_page(meta, {im}, "embedded");
  CHECK(contains(page, "vit · w.safetensors · 1 image</p>"));
  CHECK(contains(page, "a&lt;b&gt;.png"));
  CHECK(contains(page, "<b>tabby</b> (probability 0.7500)"));
  CHECK(contains(page, "src='data:image/png;base64,AAAA'"));
  CHECK(contains(page, "src='png/0_layer0_head0.png'"));
  CHECK(contains(page, "no PNG"));
  // The layer's row: entropy ln 5 = 1.609, normalised 1, distance 0.2·(32 + 16·√2) = 10.9 px, cls share 0.2.
  CHECK(contains(page, "<td>0</td><td>0</td><td>mean</td><td>1.609</td><td>1.000</td><td>10.9</td><td>0.200</td>"));
  // The statistics against depth, one dot per head (2 heads: two dots in each chart).
  CHECK(contains(page, "Mean attention distance by depth"));
  CHECK(contains(page, "Attention entropy by depth"));
  CHECK(!contains(page, "Head importance by depth"));  // no importance in meta: no chart
  CHECK(!contains(page, "Heads masked"));

  // A data set's page: a class section with its summary, the importance chart, the masking result.
  nlohmann::json data_meta = meta;
  data_meta["layers"][0]["importance"] = {0.6, 0.8};
  data_meta.erase("images");
  data_meta["data"] = {{"root", "set"}, {"split", "Testing"}, {"images", 40}};
  data_meta["masking"] = {{"description", "layer 0 head 1 zeroed"}, {"accuracy", 0.9}, {"accuracy_masked", 0.5},
                          {"loss", 0.3}, {"loss_masked", 1.2}, {"images", 40}};
  ImageSection cls{"class tabby (40 images)", "", 0, {"mean input", ""}, {}, "accuracy 0.9000 on this class"};
  const std::string data_page = attention_page(data_meta, {cls}, "");
  CHECK(contains(data_page, "vit · w.safetensors · 40 images</p>"));  // the data set's, not the one class section
  CHECK(contains(data_page, "accuracy 0.9000 on this class"));
  CHECK(!contains(data_page, "prediction:"));
  CHECK(contains(data_page, "Head importance by depth"));
  CHECK(contains(data_page, "accuracy 0.9000 → 0.5000, mean loss 0.3000 → 1.2000 over 40 images"));
}
