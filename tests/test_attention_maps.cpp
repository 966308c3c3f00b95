// Attention maps (models/attention_maps.h): the layers' geometry, the probabilities against transformers',
// rollout against an independent numpy rollout, the key-to-query transport, and bad input. The fixtures are
// tests/fixtures/attention/{vit,cvt}.safetensors, written by tools/make_attention_fixtures.py.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "engine/ops.h"
#include "engine/random.h"
#include "engine/safetensors.h"
#include "models/attention_maps.h"
#include "models/model.h"
#include "tests/errors.h"

using namespace tessera;
using namespace tessera::models;
using tessera::testing::contains;
using tessera::testing::error_of;

namespace {

// Tolerances.
// Probabilities: the fixture ran transformers in float64 on the float32 weights, so it is exact up to its
// float32 storage (2^-24 relative). tessera computes in float32: as for the logits in test_models.cpp,
// each score s = scale·q·k carries a relative error of ~1e-6 of its terms' scale after the few layers
// before it, and the scores here stay below ~20, so |Δs| ≲ 2e-5; softmax moves p_j by
// p_j·(Δs_j − Σ_i p_i·Δs_i), at most 2·max|Δs| ≲ 4e-5. 1e-4 keeps a margin and still fails on any slip of
// scale, layer order or cls handling (each moves probabilities by ≥ 1e-2 at these scores).
constexpr double kProbTol = 1e-4;
// Rollout against numpy on the SAME float32 probabilities: both sides compute in float64 and differ only in
// summation order (≤ 17-term sums, ≤ 3 layers: ~1e-15), but tessera stores the map in float32, whose
// rounding of values ≤ 1 is at most 2^-24.
const double kMapTol = std::ldexp(1.0, -24) + 1e-12;
// cls mass: float64 means of the same float32 numbers on both sides.
constexpr double kMassTol = 1e-12;
// Gradients ∂y/∂A = (∂y/∂ctx)·vᵀ: the float32 forward and backward give each a relative error of a few
// 1e-6 of its terms' scale (as the scores above), so |Δ∂A| ≲ 1e-5·max|∂A| (measured: ≤ 4e-7 of it). A wrong
// layer, class, transpose or scale moves them by O(max|∂A|).
constexpr double kGradTol = 1e-5;
// Head importance, unit-normalised per layer: each per-image gate gradient is a sum of Tq·D products
// ⟨ctx, ∂L/∂ctx⟩ carrying a relative error of ~1e-6 of Σ|terms|; 1e-5 leaves a factor 10 for cancellation
// in those sums (measured: ≤ 3e-7). A wrong loss, sign or a mix-up of images or heads moves values by ≥ 1e-2.
constexpr double kImportanceTol = 1e-5;

double max_abs_diff(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  const auto va = a.to_vector<double>(), vb = b.to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < va.size(); ++i) d = std::max(d, std::abs(va[i] - vb[i]));
  return d;
}

struct AttnFixture {
  ModelConfig config;
  std::map<std::string, Tensor> weights, ref;
  std::vector<int64_t> rollout;
  explicit AttnFixture(const std::string& name) {
    const std::string path = std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/attention/" + name + ".safetensors";
    REQUIRE_MESSAGE(std::filesystem::exists(path), "missing " << path << " (run tools/make_attention_fixtures.py)");
    SafetensorsFile f(path);
    config = parse_config(nlohmann::json::parse(f.metadata().at("config")), path);
    rollout = nlohmann::json::parse(f.metadata().at("rollout_layers")).get<std::vector<int64_t>>();
    for (auto& [n, t] : load_safetensors(path))
      (n.rfind("fixture.", 0) == 0 ? ref[n.substr(8)] : weights[n]) = t;
  }
  Tensor pixels() const { return ref.at("pixel_values"); }
  std::unique_ptr<Model> model() const {  // the fixture's weights in a tessera model
    auto m = make_model(config);
    m->load_state_dict(weights, "fixture");
    return m;
  }
  std::vector<AttentionLayout> layouts() const {
    return attention_layouts(config, pixels().size(2), pixels().size(3));
  }
  std::vector<Tensor> probs(const std::vector<int64_t>& layers) const {
    std::vector<Tensor> out;
    for (int64_t l : layers) out.push_back(ref.at("probs." + std::to_string(l)));
    return out;
  }
};

std::vector<AttentionLayout> pick(const std::vector<AttentionLayout>& all, const std::vector<int64_t>& layers) {
  std::vector<AttentionLayout> out;
  for (int64_t l : layers) out.push_back(all[size_t(l)]);
  return out;
}

// Row-stochastic random probabilities (B, heads, T, T), f64.
Tensor random_probs(uint64_t seed, int64_t B, int64_t heads, int64_t T) {
  Generator g(seed);
  return softmax(g.normal({B, heads, T, T}, 0, 2, DType::f64), -1);
}

}  // namespace

TEST_CASE("attention layouts: CvT-13 and ViT-B/16 at 224 px") {
  const auto cvt = attention_layouts(preset_config("cvt-13"), 224, 224);
  REQUIRE(cvt.size() == 13);
  CHECK((cvt[0].queries() == 3136 && cvt[0].keys() == 784 && cvt[0].heads == 1 && !cvt[0].cls));
  CHECK((cvt[1].queries() == 784 && cvt[1].keys() == 196 && cvt[2].heads == 3));
  CHECK((cvt[3].queries() == 197 && cvt[3].keys() == 50 && cvt[12].heads == 6 && cvt[12].cls));
  CHECK((cvt[12].query_rows == 14 && cvt[12].key_cols == 7 && cvt[12].stride == 2 && cvt[12].kernel == 3));
  CHECK(cvt[12].scale == doctest::Approx(1 / std::sqrt(384.0)));
  CHECK(rollout_layers(cvt) == std::vector<int64_t>{3, 4, 5, 6, 7, 8, 9, 10, 11, 12});
  const auto vit = attention_layouts(preset_config("vit-b16"), 224, 224);
  REQUIRE(vit.size() == 12);
  CHECK((vit[11].queries() == 197 && vit[11].keys() == 197 && vit[11].heads == 12 && vit[11].kernel == 1));
  CHECK(vit[0].scale == doctest::Approx(0.125));
  CHECK(rollout_layers(vit).size() == 12);
  CvtConfig no_cls = std::get<CvtConfig>(preset_config("cvt-13"));
  no_cls.cls_token = {false, false, false};
  CHECK(rollout_layers(attention_layouts(no_cls, 224, 224)).empty());
  CHECK(contains(error_of([] { attention_layouts(preset_config("vit-b16"), 8, 224); }), "smaller than one patch"));
}

TEST_CASE("attention probabilities equal transformers' (fixtures)") {
  for (const char* name : {"vit", "cvt"}) {
    INFO(name);
    AttnFixture fx(name);
    auto model = fx.model();
    AttentionCapture kept;
    const AttentionHooks capture = capture_attention(kept, {}, std::nullopt);
    const std::map<int64_t, Tensor>& captured = kept.probs;
    Generator gen(0);
    {
      NoGradGuard ng;
      model->set_attention_hooks(&capture);
      model->forward(fx.pixels(), false, gen);
      model->set_attention_hooks(nullptr);
    }
    const auto layouts = fx.layouts();
    REQUIRE(captured.size() == layouts.size());
    std::vector<Tensor> ours;
    double worst = 0;  // over the rolled-out layers
    for (const auto& [layer, p] : captured) {
      const AttentionLayout& a = layouts[size_t(layer)];
      const Tensor& want = fx.ref.at("probs." + std::to_string(layer));
      CHECK(p.shape() == Shape{2, a.heads, a.queries(), a.keys()});
      const double d = max_abs_diff(p, want);
      INFO("layer " << layer << " " << p.str() << ": max |tessera - transformers| = " << d);
      MESSAGE(std::string(name) << " layer " << layer << ": max |tessera - transformers| = " << d);
      CHECK(d <= kProbTol);
      if (std::find(fx.rollout.begin(), fx.rollout.end(), layer) != fx.rollout.end()) worst = std::max(worst, d);
      ours.push_back(p);
    }
    // Rollout from tessera's own probabilities against numpy's from transformers' (mean, no discard).
    // Without discard Â = (A + I)/2 with A = F·S; F and S are row-stochastic, so a probability error δ
    // changes each Â row by at most Tk·δ/2 in sum, and the product of L row-stochastic matrices by at most
    // L·Tk·δ/2 per row of R. The map divides R's cls row by its peak, which doubles that relative to the peak.
    // δ is the largest probability difference just measured on those layers.
    std::vector<Tensor> rolled;
    for (int64_t l : fx.rollout) rolled.push_back(ours[size_t(l)]);
    const auto rl = pick(layouts, fx.rollout);
    const AttentionMap r = attention_map(rolled, {}, rl, {});
    std::vector<Tensor> carried;
    for (size_t i = 0; i < rolled.size(); ++i) carried.push_back(carry_to_queries(fuse_heads(rolled[i], HeadFusion::Mean), rl[i]));
    const auto row = rollout_cls_row(carried, 0).to_vector<double>();
    const size_t T = size_t(rl.back().queries());
    double peak = INFINITY;  // the smaller of the images' peaks bounds both
    for (size_t b = 0; b < 2; ++b)
      peak = std::min(peak, *std::max_element(row.begin() + long(b * T + 1), row.begin() + long((b + 1) * T)));
    const double tol = 2.0 * double(rl.size()) * double(rl.back().keys()) * worst / 2 / peak + kMapTol;
    const double d = max_abs_diff(r.map, fx.ref.at("rollout.mean_0.0"));
    MESSAGE(std::string(name) << " rollout from tessera's probabilities: max diff " << d << " (tolerance " << tol << ")");
    CHECK(d <= tol);
  }
}

TEST_CASE("rollout equals the numpy rollout on the same probabilities") {
  for (const char* name : {"vit", "cvt"}) {
    AttnFixture fx(name);
    const auto layouts = fx.layouts();
    CHECK(rollout_layers(layouts) == fx.rollout);
    for (const auto& [fuse, discard] : std::vector<std::pair<std::string, std::string>>{{"mean", "0.0"}, {"max", "0.6"}}) {
      INFO(name << " " << fuse << " discard " << discard);
      MapOptions o;
      o.fusion = parse_head_fusion(fuse);
      o.discard = std::stod(discard);
      const AttentionMap r = attention_map(fx.probs(fx.rollout), {}, pick(layouts, fx.rollout), o);
      const std::string key = fuse + "_" + discard;
      const Tensor& want = fx.ref.at("rollout." + key);
      CHECK(r.map.dtype() == DType::f32);
      CHECK(max_abs_diff(r.map, want) <= kMapTol);
      CHECK(max(r.map).item() == 1.0);  // scaled to max 1 per image
      const Tensor& mass = fx.ref.at("cls_mass." + key);  // (layers, images)
      REQUIRE(int64_t(r.cls_mass.size()) == mass.size(0));
      const auto mv = mass.to_vector<double>();
      for (size_t l = 0; l < r.cls_mass.size(); ++l)
        for (size_t b = 0; b < 2; ++b) CHECK(std::abs(r.cls_mass[l][b] - mv[l * 2 + b]) <= kMassTol);
    }
  }
}

TEST_CASE("grad rollout and relevance equal numpy's on the same probabilities and gradients") {
  for (const char* name : {"vit", "cvt"}) {
    AttnFixture fx(name);
    const auto layouts = pick(fx.layouts(), fx.rollout);
    std::vector<Tensor> grads;
    for (int64_t l : fx.rollout) grads.push_back(fx.ref.at("grads." + std::to_string(l)));
    for (const char* discard : {"0.0", "0.6"}) {
      INFO(name << " grad-rollout, discard " << discard);
      const AttentionMap r = attention_map(fx.probs(fx.rollout), grads, layouts,
                                           {MapMethod::GradRollout, HeadFusion::Mean, std::stod(discard), {}});
      CHECK(max_abs_diff(r.map, fx.ref.at(std::string("grad_rollout.") + discard)) <= kMapTol);
      CHECK(r.cls_mass.empty());
    }
    INFO(name << " relevance");
    const AttentionMap r = attention_map(fx.probs(fx.rollout), grads, layouts, {MapMethod::Relevance, HeadFusion::Mean, 0, {}});
    CHECK(max_abs_diff(r.map, fx.ref.at("relevance")) <= kMapTol);
    CHECK(max(r.map).item() == 1.0);
  }
}

TEST_CASE("attention gradients and head importance equal transformers' (fixtures)") {
  for (const char* name : {"vit", "cvt"}) {
    INFO(name);
    AttnFixture fx(name);
    auto model = fx.model();
    const auto layouts = fx.layouts();
    const std::vector<int64_t> classes = fx.ref.at("target_class").to_vector<int64_t>();
    const AttentionGradients g = attention_gradients(*model, fx.pixels(), {}, classes);
    CHECK(g.classes == classes);
    REQUIRE(g.grads.size() == layouts.size());
    for (const auto& [layer, grad] : g.grads) {
      const Tensor& want = fx.ref.at("grads." + std::to_string(layer));
      const double scale = max(abs(want)).item(), d = max_abs_diff(grad, want);
      MESSAGE(std::string(name) << " layer " << layer << ": max |dA tessera - transformers| = " << d << " of max |dA| " << scale);
      CHECK(d <= kGradTol * scale);
      CHECK(max_abs_diff(g.probs.at(layer), fx.ref.at("probs." + std::to_string(layer))) <= kProbTol);
    }
    for (const auto& p : model->parameters()) CHECK_FALSE(p.tensor.grad().defined());  // no parameter touched
    CHECK(model->parameters()[0].tensor.requires_grad());                              // and all restored

    // The maps from tessera's own probabilities and gradients (no discard: continuous in its inputs).
    // Each entry of a layer's matrix Ā (a mean over heads of P⊙∂P, after or before a ReLU, both 1-Lipschitz)
    // moves by at most η = δP·max|∂P| + δG (P ≤ 1), δP and δG the largest differences just measured, and
    // carrying by S (row-stochastic) keeps that bound. Grad rollout: a row of Ā + I sums to ≥ 1, so each
    // normalised row moves by ≤ 2·T·η in sum, the product of L such matrices by ≤ 2·L·T·η per row, and the
    // map, divided by its peak p, by ≤ 4·L·T·η / p. Relevance: the cls row of Π(I + Ā_l), each factor with
    // row sums ≤ ρ = 1 + T·max Ā, moves by ≤ L·ρ^(L−1)·T·η, and the map by twice that over its peak p.
    std::vector<Tensor> probs, grads;
    double eta = 0, max_weight = 0;
    for (int64_t l : fx.rollout) {
      probs.push_back(g.probs.at(l)), grads.push_back(g.grads.at(l));
      const std::string key = std::to_string(l);
      eta = std::max(eta, max_abs_diff(probs.back(), fx.ref.at("probs." + key)) * max(abs(grads.back())).item() +
                              max_abs_diff(grads.back(), fx.ref.at("grads." + key)));
    }
    const auto rl = pick(layouts, fx.rollout);
    const double L = double(rl.size()), T = double(rl.back().queries());
    for (MapMethod m : {MapMethod::GradRollout, MapMethod::Relevance}) {
      std::vector<Tensor> carried;
      for (size_t i = 0; i < rl.size(); ++i) {
        carried.push_back(carry_to_queries(weigh_heads_by_gradient(probs[i], grads[i], m), rl[i]));
        max_weight = std::max(max_weight, max(carried.back()).item());
      }
      const auto row = (m == MapMethod::Relevance ? relevance_cls_row(carried) : rollout_cls_row(carried, 0)).to_vector<double>();
      double peak = INFINITY;  // the smaller of the images' peaks bounds both
      for (size_t b = 0; b < 2; ++b)
        peak = std::min(peak, *std::max_element(row.begin() + long(b * size_t(T) + 1), row.begin() + long((b + 1) * size_t(T))));
      const double rho = 1 + T * max_weight;
      const double tol = (m == MapMethod::Relevance ? 2 * L * std::pow(rho, L - 1) * T * eta : 4 * L * T * eta) / peak + kMapTol;
      const AttentionMap r = attention_map(probs, grads, rl, {m, HeadFusion::Mean, 0, {}});
      const double d = max_abs_diff(r.map, fx.ref.at(m == MapMethod::Relevance ? "relevance" : "grad_rollout.0.0"));
      MESSAGE(std::string(name) << " " << std::string(map_method_name(m)) << " from tessera's gradients: max diff " << d
                                << " (tolerance " << tol << ")");
      CHECK(d <= tol);
    }

    const auto sums = head_importance_sums(*model, fx.pixels(), fx.ref.at("labels"));
    const auto importance = normalise_importance(sums);
    REQUIRE(importance.size() == layouts.size());
    for (const auto& [layer, v] : importance) {
      const auto want = fx.ref.at("importance." + std::to_string(layer)).to_vector<double>();
      REQUIRE(v.size() == want.size());
      for (size_t h = 0; h < v.size(); ++h) {
        INFO("layer " << layer << " head " << h << ": " << v[h] << " vs " << want[h]);
        CHECK(std::abs(v[h] - want[h]) <= kImportanceTol);
      }
    }
  }
}

TEST_CASE("attention gradients: further layers give q and k in the same pass, and no probabilities") {
  AttnFixture fx("cvt");
  auto model = fx.model();
  const auto layouts = fx.layouts();
  const std::vector<int64_t> classes = fx.ref.at("target_class").to_vector<int64_t>();
  const AttentionGradients plain = attention_gradients(*model, fx.pixels(), fx.rollout, classes);
  const AttentionGradients g = attention_gradients(*model, fx.pixels(), fx.rollout, classes, {}, {0, 1});
  // The rolled-out layers as before, bit for bit; layers 0 and 1 only as q and k.
  REQUIRE(g.probs.size() == fx.rollout.size());
  for (int64_t l : fx.rollout) {
    CHECK(max_abs_diff(g.probs.at(l), plain.probs.at(l)) == 0);
    CHECK(max_abs_diff(g.grads.at(l), plain.grads.at(l)) == 0);
  }
  CHECK(g.queries.size() == 2);
  CHECK(g.keys.size() == 2);
  for (int64_t l : {0, 1}) {
    const AttentionLayout& a = layouts[size_t(l)];
    const Tensor &q = g.queries.at(l), &k = g.keys.at(l);
    CHECK(q.size(1) == a.heads);
    CHECK(q.size(2) == a.queries());
    CHECK(k.size(2) == a.keys());
    CHECK_FALSE(q.requires_grad());
    // They are the layer's: softmax(q·kᵀ·scale) is transformers' probabilities.
    const Tensor p = softmax(mul(matmul(q, k.transpose(-1, -2)), a.scale), -1);
    CHECK(max_abs_diff(p, fx.ref.at("probs." + std::to_string(l))) <= kProbTol);
  }
}

TEST_CASE("capture_attention: q and k of some layers, the probabilities of others, in a forward pass") {
  AttnFixture fx("cvt");
  auto model = fx.model();
  const auto layouts = fx.layouts();
  for (bool with_probabilities : {true, false}) {
    CAPTURE(with_probabilities);
    AttentionCapture kept;
    const AttentionHooks hooks =
        capture_attention(kept, {0, 1}, with_probabilities ? fx.rollout : std::vector<int64_t>{});
    NoGradGuard no_grad;
    Generator unused(0);
    model->set_attention_hooks(&hooks);
    model->forward(fx.pixels(), /*training=*/false, unused);
    model->set_attention_hooks(nullptr);
    CHECK(kept.probs.size() == (with_probabilities ? fx.rollout.size() : 0));
    for (const auto& [l, p] : kept.probs) CHECK(max_abs_diff(p, fx.ref.at("probs." + std::to_string(l))) <= kProbTol);
    REQUIRE(kept.queries.size() == 2);
    REQUIRE(kept.keys.size() == 2);
    for (int64_t l : {0, 1}) {
      const Tensor p = softmax(mul(matmul(kept.queries.at(l), kept.keys.at(l).transpose(-1, -2)), layouts[size_t(l)].scale), -1);
      CHECK(max_abs_diff(p, fx.ref.at("probs." + std::to_string(l))) <= kProbTol);
    }
  }
  AttentionCapture none;
  CHECK_FALSE(capture_attention(none, {}, std::vector<int64_t>{}).wants(0));  // nothing asked: nothing hooked
}

TEST_CASE("maps down to the pixels equal numpy's dense chain through every stage") {
  for (const char* name : {"vit", "cvt"}) {
    AttnFixture fx(name);
    const auto layouts = fx.layouts();
    std::vector<int64_t> all;
    for (const auto& a : layouts) all.push_back(a.layer);
    std::vector<Tensor> grads;
    for (int64_t l : all) grads.push_back(fx.ref.at("grads." + std::to_string(l)));
    for (MapMethod m : {MapMethod::Rollout, MapMethod::GradRollout, MapMethod::Relevance}) {
      std::string key = map_method_name(m);
      std::replace(key.begin(), key.end(), '-', '_');
      INFO(name << " " << key);
      const PixelMaps p = attention_map_to_pixels(fx.probs(all), grads, layouts, {m, HeadFusion::Mean, 0, {}});
      // Both sides in float64 from the same float32 inputs; the row-vector products and numpy's dense
      // matrices sum in different orders (≤ 140-term sums over ≤ 6 layers: ~1e-13 relative), and the maps are
      // stored in float32: kMapTol.
      CHECK(max_abs_diff(p.pixels, fx.ref.at("to_pixels." + key)) <= kMapTol);
      REQUIRE(p.stages.size() == (std::string(name) == "vit" ? 1u : 3u));
      for (size_t s = 0; s < p.stages.size(); ++s)
        CHECK(max_abs_diff(p.stages[s], fx.ref.at("to_pixels." + key + ".stage" + std::to_string(s))) <= kMapTol);
      const auto dropped = fx.ref.at("to_pixels." + key + ".cls_dropped").to_vector<double>();
      for (size_t b = 0; b < 2; ++b) CHECK(std::abs(p.cls_dropped[b] - dropped[b]) <= 1e-12);
      // The last stage's map is the one attention_map gives (the same products, one as matrices).
      const AttentionMap last = attention_map(fx.probs(fx.rollout), m == MapMethod::Rollout ? std::vector<Tensor>{} : [&] {
        std::vector<Tensor> g;
        for (int64_t l : fx.rollout) g.push_back(grads[size_t(l)]);
        return g;
      }(), pick(layouts, fx.rollout), {m, HeadFusion::Mean, 0, {}});
      CHECK(max_abs_diff(p.stages.back(), last.map) <= kMapTol);
    }
  }
}

TEST_CASE("maps down to the pixels: bad input is refused with the reason") {
  AttnFixture fx("cvt");
  const auto layouts = fx.layouts();
  std::vector<int64_t> all;
  for (const auto& a : layouts) all.push_back(a.layer);
  CHECK(contains(error_of([&] { attention_map_to_pixels(fx.probs(fx.rollout), {}, pick(layouts, fx.rollout), {}); }),
                 "needs every layer in order"));
  CHECK(contains(error_of([&] { attention_map_to_pixels(fx.probs(all), {}, layouts, {MapMethod::Rollout, HeadFusion::Mean, 0.5, {}}); }),
                 "takes no discard"));
  CHECK(contains(error_of([&] { attention_map_to_pixels(fx.probs(all), {}, layouts, {MapMethod::Relevance, HeadFusion::Mean, 0, {}}); }),
                 "needs the gradients of every layer"));
}

TEST_CASE("S = I (stride 1, kernel 1, padding 0): the CvT path reduces exactly to the ViT formulas") {
  AttentionLayout a;
  a.cls = true, a.heads = 3, a.query_rows = a.key_rows = 3, a.query_cols = a.key_cols = 4;
  a.kernel = 1, a.stride = 1, a.padding = 0;
  const int64_t T = a.queries();
  const Tensor S = key_to_query_transport(a);
  const auto sv = S.to_vector<double>();
  for (int64_t i = 0; i < T; ++i)
    for (int64_t j = 0; j < T; ++j) CHECK(sv[size_t(i * T + j)] == (i == j ? 1.0 : 0.0));
  const std::vector<Tensor> probs = {random_probs(1, 2, 3, T), random_probs(2, 2, 3, T), random_probs(3, 2, 3, T)};
  const std::vector<AttentionLayout> layouts(3, a);
  for (HeadFusion f : {HeadFusion::Mean, HeadFusion::Max, HeadFusion::Min})
    for (double discard : {0.0, 0.5}) {
      INFO(head_fusion_name(f) << " discard " << discard);
      std::vector<Tensor> fused;
      for (const Tensor& p : probs) {
        fused.push_back(fuse_heads(p, f, {0, 2}));
        CHECK(carry_to_queries(fused.back(), a).to_vector<double>() == fused.back().to_vector<double>());
      }
      // The ViT formulas: the cls row of the rollout of the fused matrices, scaled to max 1.
      const auto row = rollout_cls_row(fused, discard).to_vector<double>();
      std::vector<float> want;
      for (int64_t b = 0; b < 2; ++b) {
        const double peak = *std::max_element(row.begin() + b * T + 1, row.begin() + (b + 1) * T);
        for (int64_t t = 1; t < T; ++t) want.push_back(float(row[size_t(b * T + t)] / peak));
      }
      const AttentionMap r = attention_map(probs, {}, layouts, {MapMethod::Rollout, f, discard, {0, 2}});
      CHECK(r.map.shape() == Shape{2, 3, 4});
      CHECK(r.map.to_vector<float>() == want);
    }
}

TEST_CASE("transport: rows sum to 1, keys spread over their receptive fields") {
  auto check_rows = [](const AttentionLayout& a) {
    const Tensor S = key_to_query_transport(a);
    REQUIRE(S.shape() == Shape{a.keys(), a.queries()});
    const auto sv = S.to_vector<double>();
    std::vector<double> column(size_t(a.queries()), 0.0);
    bool nonnegative = true;
    double worst = 0;
    for (int64_t t = 0; t < a.keys(); ++t) {
      double s = 0;
      for (int64_t j = 0; j < a.queries(); ++j) {
        const double w = sv[size_t(t * a.queries() + j)];
        nonnegative = nonnegative && w >= 0;
        s += w;
        column[size_t(j)] += w;
      }
      worst = std::max(worst, std::abs(s - 1.0));
    }
    INFO("layer " << a.layer);
    CHECK(nonnegative);
    CHECK(worst <= 1e-15);  // at most 9 equal weights 1/n summed: a few roundings of 2^-53
    CHECK(*std::min_element(column.begin(), column.end()) > 0);  // every query position is reached by a key
    return sv;
  };
  const auto cvt13 = attention_layouts(preset_config("cvt-13"), 224, 224);
  for (const AttentionLayout& a : cvt13) check_rows(a);  // stage 0's is 784 × 3136 (dense here, only in a test)
  // The fixture's last stage: queries 3 × 4, keys 2 × 2 (kernel 3, stride 2, padding 1), cls first.
  AttnFixture fx("cvt");
  const AttentionLayout a = fx.layouts().back();
  REQUIRE((a.query_rows == 3 && a.query_cols == 4 && a.key_rows == 2 && a.key_cols == 2 && a.cls));
  const auto sv = check_rows(a);
  const int64_t Tq = a.queries();
  auto s = [&](int64_t key, int64_t r, int64_t c) { return sv[size_t(key * Tq + 1 + r * 4 + c)]; };
  CHECK(sv[0] == 1.0);                        // cls -> cls
  CHECK(s(1, 0, 0) == 0.25);                  // key (0, 0): rows 0..1 × cols 0..1
  CHECK(s(1, 2, 0) == 0.0);
  CHECK(s(4, 1, 1) == doctest::Approx(1.0 / 6));  // key (1, 1): rows 1..2 × cols 1..3
  CHECK(s(4, 0, 3) == 0.0);
  for (int64_t j = 1; j < Tq; ++j) CHECK(sv[size_t(j)] == 0.0);  // the cls key reaches no image position
}

TEST_CASE("discard: the lowest share is zeroed, never the cls token's own entry") {
  // One 2 × 2 matrix, discard 0.5: k = 2 smallest are 0.1 (index 0, kept) and 0.4 (zeroed). Then
  // (A + I) = [[1.1, 0.9], [0.6, 1.0]], rows normalised: [[0.55, 0.45], [0.375, 0.625]]; R's cls row is the
  // first row.
  const Tensor a = Tensor::from(std::vector<double>{0.1, 0.9, 0.6, 0.4}, {1, 2, 2});
  const auto row = rollout_cls_row({a}, 0.5).to_vector<double>();
  CHECK(row[0] == doctest::Approx(0.55).epsilon(1e-15));
  CHECK(row[1] == doctest::Approx(0.45).epsilon(1e-15));
  // Two layers: R = Â_2 Â_1, so R[0, :] = Â_2[0, :] · Â_1.
  const Tensor b = Tensor::from(std::vector<double>{0.5, 0.5, 0.2, 0.8}, {1, 2, 2});  // Â = [[.75,.25],[.1,.9]]
  const auto two = rollout_cls_row({a, b}, 0.0).to_vector<double>();  // Â_1 = [[.55,.45],[.3,.7]]
  CHECK(two[0] == doctest::Approx(0.75 * 0.55 + 0.25 * 0.3).epsilon(1e-14));
  CHECK(two[1] == doctest::Approx(0.75 * 0.45 + 0.25 * 0.7).epsilon(1e-14));
}

TEST_CASE("attention maps: bad input is refused with the reason") {
  CHECK(contains(error_of([] { parse_head_fusion("median"); }), "'median'"));
  const Tensor p = random_probs(4, 1, 2, 5);
  CHECK(contains(error_of([&] { fuse_heads(p, HeadFusion::Mean, {2}); }), "head 2 does not exist"));
  CHECK(contains(error_of([&] { fuse_heads(p.select(0, 0), HeadFusion::Mean); }), "4 dimensions"));
  const Tensor f = fuse_heads(p, HeadFusion::Max);
  CHECK(contains(error_of([&] { rollout_cls_row({f}, 1.0); }), "outside [0, 1)"));
  CHECK(contains(error_of([&] { rollout_cls_row({f}, -0.1); }), "outside [0, 1)"));
  CHECK(contains(error_of([&] { rollout_cls_row({}, 0.0); }), "at least one layer"));
  AttentionLayout a;
  a.cls = true, a.query_rows = a.query_cols = 2, a.key_rows = a.key_cols = 1;
  CHECK(contains(error_of([&] { carry_to_queries(f, a); }), "does not match"));
  a.key_rows = a.key_cols = 2;
  CHECK(contains(error_of([&] { attention_map({p, p}, {}, {a}, {}); }), "2 captured layers for 1 layouts"));
  CHECK(contains(error_of([&] { attention_map({p}, {}, {a}, {MapMethod::Rollout, HeadFusion::Mean, 0, {7}}); }), "layer 0: head 7"));
  CHECK(contains(error_of([&] { attention_map({p}, {}, {a}, {MapMethod::Relevance, HeadFusion::Mean, 0, {}}); }),
                 "relevance needs the gradients of every layer: 0 for 1 layers"));
  CHECK(contains(error_of([&] { weigh_heads_by_gradient(p, p.select(1, 0), MapMethod::GradRollout); }), "do not match"));
  CHECK(contains(error_of([] { parse_map_method("saliency"); }), "unknown map method 'saliency'"));
  a.cls = false;
  CHECK(contains(error_of([&] { attention_map({p}, {}, {a}, {}); }), "needs a cls token"));
  CHECK(relevance_cls_row({f}).shape() == Shape{1, 5});
  CHECK(contains(error_of([] { relevance_cls_row({}); }), "at least one layer"));
}

TEST_CASE("attention gradients: a class the model lacks is refused, and the model is left as it was") {
  AttnFixture fx("vit");
  auto model = fx.model();
  CHECK(contains(error_of([&] { attention_gradients(*model, fx.pixels(), {}, {0, 3}); }), "class 3 does not exist: the model has 3 classes"));
  CHECK(contains(error_of([&] { attention_gradients(*model, fx.pixels(), {}, {0}); }), "1 classes for 2 images"));
  for (const auto& p : model->parameters()) CHECK(p.tensor.requires_grad());
  Generator gen(0);
  NoGradGuard ng;  // no hooks left behind: the plain forward is the fused one, bit for bit
  const auto once = model->forward(fx.pixels(), false, gen).to_vector<float>();
  CHECK(model->forward(fx.pixels(), false, gen).to_vector<float>() == once);
}
