// CvT and ViT: configs, parameter registry and counts, strict checkpoint loading, save/load round trips,
// train/eval behaviour, float64 gradient checks, and parity with Hugging Face transformers through the
// fixtures tools/make_model_fixtures.py wrote (tests/fixtures/models/{cvt,vit}.safetensors).
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include <nlohmann/json.hpp>

#include "kernels/devices.h"
#include "engine/ops.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "models/cvt.h"
#include "models/model.h"
#include "models/vit.h"
#include "engine/core/backend.h"
#include "tests/bf16_step.h"
#include "tests/cuda_test_util.h"
#include "tests/gradcheck.h"
#include "tests/temp_dir.h"

using namespace tessera;
using namespace tessera::models;
using tessera::testing::closeness;
namespace fs = std::filesystem;

namespace {

std::string fixture_path(const char* name) {
  return std::string(TESSERA_SOURCE_DIR) + "/tests/fixtures/models/" + name;
}

using tessera::testing::TempDir;

// Small configs that keep every feature: CvT with three stages, a cls token in the last, several heads.
CvtConfig tiny_cvt(int64_t labels = 5) {
  CvtConfig c;
  c.embed_dim = {16, 24, 32};
  c.num_heads = {1, 2, 2};
  c.depth = {1, 2, 3};  // depth[s] > s: transformers indexes the drop-path linspace by the stage
  c.drop_path_rate = {0, 0, 0};
  c.id2label = default_labels(labels);
  return c;
}
VitConfig tiny_vit(int64_t labels = 5) {
  VitConfig v;
  v.hidden_size = 32, v.num_hidden_layers = 2, v.num_attention_heads = 2, v.intermediate_size = 64;
  v.image_size = 32, v.patch_size = 8;
  v.id2label = default_labels(labels);
  return v;
}

Tensor random_images(uint64_t seed, int64_t B, int64_t H, int64_t W, DType dt = DType::f32) {
  Generator g(seed);
  return g.normal({B, 3, H, W}, 0, 1, dt);
}

// Max |a − b| over max |b|: the error relative to the tensor's scale; infinite when the shapes differ.
// (No assertion inside: it is also evaluated lazily within INFO, where doctest holds its log lock.)
double scaled_error(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape()) return INFINITY;
  auto va = a.to(Device::CPU).to_vector<double>(), vb = b.to(Device::CPU).to_vector<double>();
  double err = 0, scale = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    err = std::max(err, std::abs(va[i] - vb[i]));
    scale = std::max(scale, std::abs(vb[i]));
  }
  if (!std::isfinite(err)) return INFINITY;
  return scale > 0 ? err / scale : err;
}

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.to_vector<double>() == b.to_vector<double>();
}

// The fixture split into the checkpoint (weights) and the reference values (fixture.*).
struct Fixture {
  ModelConfig config;
  std::map<std::string, Tensor> weights, ref;
  explicit Fixture(const char* file) {
    const std::string path = fixture_path(file);
    REQUIRE_MESSAGE(fs::exists(path), "missing fixture " << path << " (run tools/make_model_fixtures.py)");
    SafetensorsFile f(path);
    config = parse_config(nlohmann::json::parse(f.metadata().at("config")), path + " metadata");
    for (auto& [name, t] : load_safetensors(path)) {
      if (name.rfind("fixture.", 0) == 0) ref[name.substr(8)] = t;
      else weights[name] = t;
    }
  }
  std::unique_ptr<Model> model() const {
    auto m = make_model(config);
    m->load_state_dict(weights, "fixture");
    return m;
  }
};

}  // namespace

// ================================================================ configs
TEST_CASE("presets match the hub configs") {
  auto c13 = std::get<CvtConfig>(preset_config("cvt-13"));
  CHECK(c13.embed_dim == std::vector<int64_t>{64, 192, 384});
  CHECK(c13.depth == std::vector<int64_t>{1, 2, 10});
  CHECK(std::get<CvtConfig>(preset_config("cvt-21")).depth == std::vector<int64_t>{1, 4, 16});
  auto w24 = std::get<CvtConfig>(preset_config("cvt-w24"));
  CHECK(w24.embed_dim == std::vector<int64_t>{192, 768, 1024});
  CHECK(w24.num_heads == std::vector<int64_t>{3, 12, 16});
  CHECK(w24.depth == std::vector<int64_t>{2, 2, 20});
  auto l16 = std::get<VitConfig>(preset_config("vit-l16"));
  CHECK(l16.hidden_size == 1024);
  CHECK(l16.num_attention_heads == 16);
  CHECK(l16.num_hidden_layers == 24);
  CHECK(l16.intermediate_size == 4096);
  CHECK(std::get<VitConfig>(preset_config("vit-s16")).intermediate_size == 1536);
  CHECK(std::get<VitConfig>(preset_config("vit-ti16")).num_attention_heads == 3);
  for (const auto& n : preset_names()) CHECK(num_labels(preset_config(n)) == 1000);
  CHECK_THROWS_WITH_AS(preset_config("vit-h14"), doctest::Contains("vit-h14"), ConfigError);
}

TEST_CASE("config.json parsing: defaults, id2label, errors naming the file and field") {
  auto c = parse_config(nlohmann::json::parse(R"({"model_type": "cvt", "depth": [1, 4, 16],
      "id2label": {"0": "glioma", "1": "meningioma", "2": "none", "3": "pituitary"}})"), "a/config.json");
  const auto& cvt = std::get<CvtConfig>(c);
  CHECK(cvt.depth == std::vector<int64_t>{1, 4, 16});
  CHECK(cvt.embed_dim == std::vector<int64_t>{64, 192, 384});  // CvtConfig default
  CHECK(cvt.id2label == std::vector<std::string>{"glioma", "meningioma", "none", "pituitary"});

  auto v = parse_config(nlohmann::json::parse(R"({"model_type": "vit", "num_labels": 3})"), "b/config.json");
  CHECK(std::get<VitConfig>(v).id2label == default_labels(3));
  CHECK(std::get<VitConfig>(v).layer_norm_eps == 1e-12);

  // Round trip through the JSON transformers would read.
  auto back = parse_config(config_to_json(c), "round trip");
  CHECK(std::get<CvtConfig>(back).id2label == cvt.id2label);
  CHECK(std::get<CvtConfig>(back).depth == cvt.depth);

  CHECK_THROWS_WITH_AS(parse_config(nlohmann::json::parse(R"({"model_type": "vit", "hidden_size": "big"})"), "x/config.json"),
                       doctest::Contains("x/config.json: bad config; field 'hidden_size' must be an integer"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(parse_config(nlohmann::json::parse(R"({"model_type": "bert"})"), "y/config.json"),
                       doctest::Contains("y/config.json: field 'model_type' is \"bert\""), ConfigError);
  CHECK_THROWS_WITH_AS(parse_config(nlohmann::json::parse(R"({"model_type": "cvt", "depth": [1, 2]})"), "z.json"),
                       doctest::Contains("'depth' must have 3 entries"), ConfigError);
  CHECK_THROWS_WITH_AS(parse_config(nlohmann::json::parse(R"({"model_type": "cvt", "id2label": {"0": "a", "2": "b"}})"), "w.json"),
                       doctest::Contains("w.json: bad config; field 'id2label' has key '2'"), ConfigError);
  CHECK_THROWS_WITH_AS(parse_config(nlohmann::json::parse(R"({"model_type": "vit", "hidden_size": 100, "num_attention_heads": 3})"), "h.json"),
                       doctest::Contains("not a multiple of num_attention_heads"), ConfigError);
  CHECK_THROWS_AS(load_config("/nonexistent/config.json"), ConfigError);
}

TEST_CASE("config.json values out of range are refused by field, and a model too large before allocation") {
  auto error = [](const char* text) -> std::string {
    try {
      parse_config(nlohmann::json::parse(text), "c.json");
      return "";
    } catch (const ConfigError& e) {
      return e.what();
    }
  };
  // Each was accepted before: a zero or negative epsilon (division by ~0 in every LayerNorm), absurd
  // sizes that would allocate without end, a NaN-free but meaningless mlp_ratio.
  const std::pair<const char*, const char*> cases[] = {
      {R"({"model_type": "vit", "layer_norm_eps": 0})", "field 'layer_norm_eps' must be a finite number > 0"},
      {R"({"model_type": "cvt", "layer_norm_eps": -1e-5})", "field 'layer_norm_eps' must be a finite number > 0"},
      {R"({"model_type": "vit", "num_hidden_layers": 100000})", "field 'num_hidden_layers' must be in [1, 1024]"},
      {R"({"model_type": "vit", "image_size": 1048576, "patch_size": 16})", "field 'image_size' must be in [1, 16384]"},
      {R"({"model_type": "vit", "num_labels": 2000000})", "field 'num_labels' must be in [1, 1000000]"},
      {R"({"model_type": "cvt", "depth": [1, 2, 5000]})", "field 'depth[2]' must be in [1, 1024]"},
      {R"({"model_type": "cvt", "embed_dim": [64, 192, 1000000], "num_heads": [1, 3, 8]})", "field 'embed_dim[2]' must be in [1, 65536]"},
      {R"({"model_type": "cvt", "patch_stride": [4, 0, 2]})", "field 'patch_stride[1]' must be in [1, 1024]"},
      {R"({"model_type": "cvt", "patch_padding": [2, -1, 1]})", "field 'patch_padding[1]' must be in [0, 1024]"},
      {R"({"model_type": "cvt", "mlp_ratio": [4, 4, 1000]})", "field 'mlp_ratio[2]' must be in (0, 64]"},
      {R"({"model_type": "cvt", "num_heads": [1, 3, 4096], "embed_dim": [64, 192, 8192]})", "field 'num_heads[2]' must be in [1, 1024]"},
  };
  for (const auto& [text, want] : cases) CHECK_MESSAGE(error(text).find(want) != std::string::npos, text, " -> ", error(text));
  // Every field within its bound, the product not: 1024 layers of width 16384 is ~3.3e12 parameters.
  const std::string big = error(R"({"model_type": "vit", "hidden_size": 16384, "num_attention_heads": 128,
                                    "intermediate_size": 65536, "num_hidden_layers": 1024})");
  CHECK(big.find("c.json: bad vit config; about 3.3e+12 parameters") != std::string::npos);
  CHECK(big.find("most from num_hidden_layers x hidden_size x intermediate_size") != std::string::npos);
  CHECK(big.find('\n') == std::string::npos);  // one line
  // The published sizes pass.
  for (const auto& name : preset_names()) CHECK_NOTHROW(validate(preset_config(name), name));
}

// ================================================================ registry and counts
TEST_CASE("parameter counts of the full-size models match transformers' (models/README.md)") {
  // Built without initialisation (Tensor::empty): the counts come from the same construction code the
  // forward uses, and untouched pages cost nothing.
  auto count = [](const std::string& preset, int64_t labels, size_t* n_params, size_t* n_buffers) {
    ModelConfig c = preset_config(preset);
    set_labels(c, default_labels(labels));
    auto m = make_model(c);
    *n_params = m->parameters().size();
    *n_buffers = m->entries().size() - *n_params;
    return m->num_parameters();
  };
  size_t np = 0, nb = 0;
  CHECK(count("cvt-13", 1000, &np, &nb) == 19'997'480);
  CHECK(np == 342);
  CHECK(nb == 117);  // 39 BatchNorms × (running_mean, running_var, num_batches_tracked)
  CHECK(count("cvt-13", 4, &np, &nb) == 19'614'020);
  CHECK(count("vit-b16", 1000, &np, &nb) == 86'567'656);
  CHECK(np == 200);
  CHECK(nb == 0);
  CHECK(count("vit-b16", 4, &np, &nb) == 85'801'732);
}

TEST_CASE("registry: checkpoint names, order and the LayerNorm flags") {
  Cvt cvt(tiny_cvt());
  const auto& e = cvt.entries();
  CHECK(e.front().name == "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight");
  CHECK(e.back().name == "classifier.bias");
  std::map<std::string, ModuleEntry> by;
  for (const auto& x : e) by[x.name] = x;
  const std::string a = "cvt.encoder.stages.2.layers.0.attention.attention.";
  CHECK(by.at("cvt.encoder.stages.2.cls_token").tensor.shape() == Shape{1, 1, 32});
  CHECK(by.at(a + "convolution_projection_key.convolution_projection.convolution.weight").tensor.shape() ==
        Shape{32, 1, 3, 3});
  CHECK(by.at(a + "convolution_projection_key.convolution_projection.normalization.num_batches_tracked")
            .tensor.dtype() == DType::i64);
  CHECK(by.at(a + "convolution_projection_key.convolution_projection.normalization.running_var").is_buffer);
  // The conv embedding's "normalization" is a LayerNorm; the projection's "normalization" is a BatchNorm.
  CHECK(by.at("cvt.encoder.stages.1.embedding.convolution_embeddings.normalization.weight").in_layer_norm);
  CHECK_FALSE(by.at(a + "convolution_projection_query.convolution_projection.normalization.weight").in_layer_norm);
  CHECK(by.at("layernorm.weight").in_layer_norm);
  CHECK(by.at("cvt.encoder.stages.0.layers.0.intermediate.dense.weight").tensor.shape() == Shape{64, 16});

  // Trainer groups: BatchNorm weight and cls token decay, biases and LayerNorm parameters do not.
  auto groups = trainer_param_groups(cvt.parameters(), 0.01);
  std::set<std::string> decays;
  for (const auto& p : groups[0].params) decays.insert(p.name);
  CHECK(decays.count("cvt.encoder.stages.2.cls_token"));
  CHECK(decays.count(a + "convolution_projection_query.convolution_projection.normalization.weight"));
  CHECK_FALSE(decays.count("layernorm.weight"));
  CHECK_FALSE(decays.count("classifier.bias"));
}

TEST_CASE("init follows _init_weights: N(0, 0.02²) weights, zero biases, unit norms") {
  auto m = make_model(preset_config("vit-ti16"), 7);
  auto w = m->tensor("vit.encoder.layer.0.intermediate.dense.weight").to_vector<double>();  // 147,456 draws
  double s = 0, s2 = 0;
  for (double x : w) s += x, s2 += x * x;
  const double n = double(w.size()), mu = s / n, sd = std::sqrt(s2 / n - mu * mu);
  // Standard errors: mean 0.02/√n ≈ 5e-5, std 0.02/√(2n) ≈ 4e-5; 5e-4 is > 10 of them.
  CHECK(std::abs(mu) < 5e-4);
  CHECK(std::abs(sd - 0.02) < 5e-4);
  CHECK(m->tensor("vit.encoder.layer.0.intermediate.dense.bias").to_vector<double>() == std::vector<double>(768, 0.0));
  CHECK(m->tensor("vit.layernorm.weight").to_vector<double>() == std::vector<double>(192, 1.0));
  Cvt cvt(tiny_cvt());
  Generator g(1);
  cvt.init_weights(g, 0.02);
  const std::string bn = "cvt.encoder.stages.0.layers.0.attention.attention.convolution_projection_value."
                         "convolution_projection.normalization.";
  CHECK(cvt.tensor(bn + "running_var").to_vector<double>() == std::vector<double>(16, 1.0));
  CHECK(cvt.tensor(bn + "num_batches_tracked").item() == 0);
}

TEST_CASE("CvT drop path rate: linspace(0, rate, depth)[stage]") {
  const CvtConfig c = std::get<CvtConfig>(preset_config("cvt-13"));
  CHECK(Cvt::stage_drop_path_rate(c, 0) == 0.0);
  CHECK(Cvt::stage_drop_path_rate(c, 1) == 0.0);
  // float32 linspace(0, 0.1, 10)[2] = 2 · (0.1f / 9) (first half counts up from 0).
  CHECK(Cvt::stage_drop_path_rate(c, 2) == double(2.0f * (0.1f / 9.0f)));
  CHECK(std::abs(Cvt::stage_drop_path_rate(c, 2) - 0.1 * 2 / 9) < 1e-8);
}

// ================================================================ forward behaviour
TEST_CASE("output shapes, ViT refuses other sizes unless interpolating") {
  Generator gen(3);
  auto cvt = make_model(tiny_cvt(), 1);
  CHECK(cvt->forward(random_images(1, 2, 64, 64), false, gen).shape() == Shape{2, 5});
  CHECK(cvt->forward(random_images(1, 2, 48, 80), true, gen).shape() == Shape{2, 5});
  auto vit_ptr = make_model(tiny_vit(), 1);
  auto& vit = dynamic_cast<Vit&>(*vit_ptr);
  CHECK(vit.forward(random_images(1, 2, 32, 32), false, gen).shape() == Shape{2, 5});
  CHECK_THROWS_WITH_AS(vit.forward(random_images(1, 2, 48, 48), false, gen),
                       doctest::Contains("does not match the model's 32x32"), TensorError);
  vit.interpolate_pos_encoding = true;
  CHECK(vit.forward(random_images(1, 2, 48, 40), false, gen).shape() == Shape{2, 5});
  CHECK_THROWS_AS(cvt->forward(random_images(1, 2, 64, 64).slice(1, 0, 2), false, gen), TensorError);
}

TEST_CASE("bicubic weights: torch's A = -0.75 kernel, rows sum to 1, identity at equal size") {
  Tensor id = bicubic_weights(14, 14);
  auto v = id.to_vector<double>();
  for (int64_t i = 0; i < 14; ++i)
    for (int64_t j = 0; j < 14; ++j) CHECK(v[size_t(i * 14 + j)] == (i == j ? 1.0 : 0.0));
  for (auto [in, out] : {std::pair<int64_t, int64_t>{14, 24}, {14, 7}, {4, 5}, {3, 1}}) {
    auto w = bicubic_weights(in, out).to_vector<double>();
    for (int64_t i = 0; i < out; ++i) {
      double s = 0;
      for (int64_t j = 0; j < in; ++j) s += w[size_t(i * in + j)];
      CHECK(s == doctest::Approx(1.0).epsilon(1e-6));  // a partition of unity, up to float32 coefficients
    }
  }
  // Upsampling 2 -> 4: output 1 sits at source 0.25: weights cc2(1.25), cc1(.25), cc1(.75), cc2(1.75) with
  // the two left taps clamped onto pixel 0. With A = −0.75 (PIL's −0.5 would give 0.8672 / 0.1328).
  auto w = bicubic_weights(2, 4).to_vector<double>();
  const double A = -0.75;
  auto cc1 = [&](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
  auto cc2 = [&](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
  CHECK(w[2] == doctest::Approx(cc2(1.25) + cc1(0.25)).epsilon(1e-6));
  CHECK(w[3] == doctest::Approx(cc1(0.75) + cc2(1.75)).epsilon(1e-6));
}

TEST_CASE("BatchNorm running statistics change in train mode only, ViT train == eval") {
  Generator gen(5);
  auto cvt = make_model(tiny_cvt(), 2);
  const std::string bn = "cvt.encoder.stages.1.layers.1.attention.attention.convolution_projection_key."
                         "convolution_projection.normalization.";
  Tensor x = random_images(9, 2, 64, 64);
  Tensor rm0 = cvt->tensor(bn + "running_mean").clone(), rv0 = cvt->tensor(bn + "running_var").clone();
  {
    NoGradGuard ng;
    cvt->forward(x, false, gen);
  }
  CHECK(bitwise_equal(cvt->tensor(bn + "running_mean"), rm0));
  CHECK(bitwise_equal(cvt->tensor(bn + "running_var"), rv0));
  CHECK(cvt->tensor(bn + "num_batches_tracked").item() == 0);
  cvt->forward(x, true, gen);
  CHECK_FALSE(bitwise_equal(cvt->tensor(bn + "running_mean"), rm0));
  CHECK_FALSE(bitwise_equal(cvt->tensor(bn + "running_var"), rv0));
  CHECK(cvt->tensor(bn + "num_batches_tracked").item() == 1);

  // ViT has no batch statistics, drop path or (with dropout 0) dropout: both modes compute the same.
  auto vit = make_model(tiny_vit(), 2);
  Tensor xv = random_images(10, 3, 32, 32);
  CHECK(bitwise_equal(vit->forward(xv, true, gen), vit->forward(xv, false, gen)));
}

TEST_CASE("drop path is active in training and only there") {
  CvtConfig c = tiny_cvt();
  c.drop_path_rate = {0, 0, 0.5};  // stage 3's three layers each use linspace(0, .5, 3)[2] = 0.5
  auto m = make_model(c, 4);
  Tensor x = random_images(11, 4, 64, 64);
  Generator g1(1), g2(2);
  NoGradGuard ng;
  Tensor e1 = m->forward(x, false, g1), e2 = m->forward(x, false, g2);
  CHECK(bitwise_equal(e1, e2));  // eval: deterministic
  Tensor t1 = m->forward(x, true, g1), t2 = m->forward(x, true, g2);
  CHECK_FALSE(bitwise_equal(t1, t2));  // train: the masks differ between streams

  // The port's quirk: the last drop path of a layer scales the whole sum, residual included. When the last
  // layer drops a sample, its tokens are all zero, the final LayerNorm maps 0 to its bias, and the logits are
  // exactly classifier(layernorm.bias). A branch-only drop path could never zero the residual stream.
  Tensor dropped = linear(m->tensor("layernorm.bias").unsqueeze(0), m->tensor("classifier.weight"),
                          m->tensor("classifier.bias"));  // (1, num_labels)
  int zeroed = 0, draws = 0;
  for (uint64_t seed = 0; seed < 8; ++seed) {
    Generator g(100 + seed);
    Tensor logits = m->forward(x, true, g);
    for (int64_t b = 0; b < logits.size(0); ++b, ++draws)
      zeroed += scaled_error(logits.slice(0, b, b + 1), dropped) < 1e-6;
  }
  // 32 samples, each dropped by the last layer with probability 0.5: 0 or 32 hits has probability 2^-31.
  CHECK(zeroed > 0);
  CHECK(zeroed < draws);
}

// ================================================================ checkpoints
TEST_CASE("save -> load gives identical logits, config.json round-trips") {
  TempDir dir("roundtrip");
  Generator gen(0);
  for (const ModelConfig& cfg : {ModelConfig(tiny_cvt()), ModelConfig(tiny_vit())}) {
    auto m = make_model(cfg, 3);
    Tensor x = random_images(4, 2, std::holds_alternative<CvtConfig>(cfg) ? 64 : 32,
                             std::holds_alternative<CvtConfig>(cfg) ? 64 : 32);
    NoGradGuard ng;
    Tensor before = m->forward(x, false, gen);
    const std::string sub = dir / model_type(cfg);
    save_model(*m, sub);
    CHECK(SafetensorsFile(sub + "/model.safetensors").metadata().at("format") == "pt");
    auto back = load_model(sub);
    CHECK(bitwise_equal(back->forward(x, false, gen), before));
    CHECK(back->num_labels() == 5);
    // Every tensor, buffers included, has the same bits.
    for (const auto& e : m->entries()) CHECK(bitwise_equal(back->tensor(e.name), e.tensor));
  }
}

TEST_CASE("strict loading: missing, unexpected and mismatched names reported together") {
  Fixture fx("cvt.safetensors");
  auto w = fx.weights;
  const std::string gone = "cvt.encoder.stages.1.layers.0.intermediate.dense.bias";
  const std::string wrong = "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight";
  w.erase(gone);
  w["cvt.encoder.stages.1.extra.weight"] = Tensor::zeros({3});
  w[wrong] = Tensor::zeros({16, 3, 5, 5});
  auto m = make_model(fx.config);
  Tensor probe = m->tensor("layernorm.weight").clone();
  try {
    m->load_state_dict(w, "some/model.safetensors");
    FAIL("no error");
  } catch (const ModelError& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.rfind("some/model.safetensors: ", 0) == 0);
    CHECK(msg.find("1 missing: [" + gone + "]") != std::string::npos);
    CHECK(msg.find("1 unexpected: [cvt.encoder.stages.1.extra.weight]") != std::string::npos);
    CHECK(msg.find(wrong + " is [16, 3, 5, 5] in the file, [16, 3, 7, 7] in the model") != std::string::npos);
  }
  CHECK(bitwise_equal(m->tensor("layernorm.weight"), probe));  // nothing was loaded

  // A file of the other architecture names it.
  TempDir dir("foreign");
  auto vit = make_model(tiny_vit(), 1);
  vit->save_safetensors(dir / "vit.safetensors");
  CHECK_THROWS_WITH_AS(m->load_safetensors(dir / "vit.safetensors"),
                       doctest::Contains("looks like a ViT checkpoint, expected CvT"), ModelError);
  // Integer data for a float parameter is a dtype mismatch.
  w = fx.weights;
  w["layernorm.bias"] = Tensor::zeros({32}, DType::i64);
  CHECK_THROWS_WITH_AS(m->load_state_dict(w, "f"), doctest::Contains("layernorm.bias has dtype i64"), ModelError);
  // A corrupt file: the safetensors reader's error names it.
  { std::ofstream(dir / "bad.safetensors") << "not a safetensors file"; }
  CHECK_THROWS_WITH(m->load_safetensors(dir / "bad.safetensors"), doctest::Contains("bad.safetensors"));
}

TEST_CASE("half-precision checkpoints are converted to f32") {
  Fixture fx("vit.safetensors");
  TempDir dir("half");
  std::map<std::string, Tensor> half;
  for (const auto& [n, t] : fx.weights) half[n] = t.to(n.find("bias") != std::string::npos ? DType::f16 : DType::bf16);
  save_safetensors(dir / "model.safetensors", half);
  auto m = load_model(fx.config, dir / "model.safetensors");
  for (const auto& [n, t] : half) {
    CHECK(m->tensor(n).dtype() == DType::f32);
    CHECK(bitwise_equal(m->tensor(n), t.to(DType::f32)));  // every f16/bf16 value is exact in f32
  }
}

TEST_CASE("num_classes replaces the head, the rest loads") {
  Fixture fx("cvt.safetensors");
  TempDir dir("head");
  { std::ofstream(dir / "config.json") << config_to_json(fx.config).dump(); }
  save_safetensors(dir / "model.safetensors", fx.weights);
  LoadOptions opt;
  opt.num_classes = 3;
  opt.head_seed = 11;
  auto m = load_model(dir.path.string(), opt);
  CHECK(m->num_labels() == 3);
  CHECK(m->tensor("classifier.weight").shape() == Shape{3, 32});
  CHECK(m->tensor("classifier.bias").to_vector<double>() == std::vector<double>(3, 0.0));
  auto w = m->tensor("classifier.weight").to_vector<double>();
  double s2 = 0;
  for (double x : w) s2 += x * x;
  // 96 draws of N(0, 0.02²): the RMS is 0.02 within ~±0.003 (one standard error 0.02/√192 ≈ 0.0014).
  CHECK(std::sqrt(s2 / 96) == doctest::Approx(0.02).epsilon(0.25));
  for (const auto& [n, t] : fx.weights)
    if (n.rfind("classifier.", 0) != 0) CHECK(bitwise_equal(m->tensor(n), t));
  Generator gen(0);
  CHECK(m->forward(fx.ref.at("pixel_values"), false, gen).shape() == Shape{3, 3});
  // Without the option the 5-class checkpoint does not fit a 3-class config.
  ModelConfig three = fx.config;
  set_labels(three, default_labels(3));
  CHECK_THROWS_WITH_AS(load_model(three, dir / "model.safetensors"), doctest::Contains("classifier.weight is [5, 32]"),
                       ModelError);
}

// ================================================================ gradients (float64)
TEST_CASE("gradcheck: tiny CvT forward (train mode) w.r.t. a few parameters") {
  CvtConfig c = tiny_cvt(3);
  c.embed_dim = {4, 6, 8};
  c.num_heads = {1, 2, 2};
  auto m = make_model(c, 21, DType::f64);
  Tensor x = random_images(22, 2, 32, 32, DType::f64);  // stage grids 8², 4², 2²; kv grids 4², 2², 1²
  Generator gen(0);
  const std::string a = "cvt.encoder.stages.1.layers.1.attention.attention.";
  std::vector<Tensor> params = {
      m->tensor("cvt.encoder.stages.2.cls_token"),
      m->tensor(a + "convolution_projection_key.convolution_projection.convolution.weight"),
      m->tensor(a + "convolution_projection_query.convolution_projection.normalization.weight"),
      m->tensor(a + "projection_value.weight"),
      m->tensor("cvt.encoder.stages.0.embedding.convolution_embeddings.normalization.bias"),
      m->tensor("classifier.bias")};
  // Weights at N(0, 0.02²) leave the attention nearly uniform; larger values exercise every path.
  {
    NoGradGuard ng;
    Generator g(23);
    for (auto& p : params) p.copy_(g.uniform(p.shape(), -0.5, 0.5, DType::f64));
  }
  testing::gradcheck([&](const std::vector<Tensor>&) { return m->forward(x, true, gen); }, params);
}

TEST_CASE("gradcheck: tiny ViT forward w.r.t. a few parameters, interpolated positions included") {
  VitConfig v = tiny_vit(3);
  v.hidden_size = 8, v.intermediate_size = 16;
  auto mp = make_model(v, 31, DType::f64);
  auto& m = dynamic_cast<Vit&>(*mp);
  m.interpolate_pos_encoding = true;
  Tensor x = random_images(32, 2, 24, 40, DType::f64);  // a 3×5 grid from the 4×4 table
  Generator gen(0);
  std::vector<Tensor> params = {m.tensor("vit.embeddings.position_embeddings"), m.tensor("vit.embeddings.cls_token"),
                                m.tensor("vit.encoder.layer.1.attention.attention.key.weight"),
                                m.tensor("vit.encoder.layer.0.layernorm_after.weight")};
  {
    NoGradGuard ng;
    Generator g(33);
    for (auto& p : params) p.copy_(g.uniform(p.shape(), -0.5, 0.5, DType::f64));
  }
  testing::gradcheck([&](const std::vector<Tensor>&) { return m.forward(x, true, gen); }, params);
}

// ================================================================ parity with transformers
// Tolerances. The fixture and the engine both compute in float32 (unit roundoff u = 6e-8) but sum in
// different orders, so each dot product of length K differs by up to ~√K·u relative to its terms' scale;
// K ≤ 128 here, the paths are ≲ 10 sequential linear/norm/attention stages deep, and LayerNorm and softmax
// are well conditioned at these activations. That predicts ~1e-6 of the logits' scale; 1e-4 leaves a 100×
// margin and still catches any semantic slip (a wrong eps, scale or order moves logits by ≥ 1e-3).
// Gradients accumulate one more backward pass of the same depth and pass through the BatchNorm backward
// (which subtracts means, cancelling digits), so they get 1e-3 of each tensor's own scale.
constexpr double kLogitTol = 1e-4, kGradTol = 1e-3;

// On `device` (the CUDA path in fp32: matmuls without TF32, which would round inputs to 10 bits).
void check_parity(const char* file, Device device = Device::CPU) {
  Fixture fx(file);
  Tensor x = fx.ref.at("pixel_values").to(device), labels = fx.ref.at("labels").to(device);
  Generator gen(0);
  const MatmulPrecision precision = matmul_precision();
  set_matmul_precision(MatmulPrecision::Highest);
  auto m = fx.model();
  m->to(device);

  {
    NoGradGuard ng;
    Tensor eval = m->forward(x, false, gen);
    INFO("eval logits error " << scaled_error(eval, fx.ref.at("logits_eval")));
    CHECK(scaled_error(eval, fx.ref.at("logits_eval")) < kLogitTol);
  }
  if (fx.ref.count("logits_interp")) {
    NoGradGuard ng;
    auto& vit = dynamic_cast<Vit&>(*m);
    vit.interpolate_pos_encoding = true;
    Tensor li = vit.forward(fx.ref.at("pixel_values_interp").to(device), false, gen);
    INFO("interpolated logits error " << scaled_error(li, fx.ref.at("logits_interp")));
    CHECK(scaled_error(li, fx.ref.at("logits_interp")) < kLogitTol);
    vit.interpolate_pos_encoding = false;
  }

  Tensor train = m->forward(x, true, gen);
  Tensor loss = cross_entropy(train, labels);
  INFO("train logits error " << scaled_error(train, fx.ref.at("logits_train")));
  CHECK(scaled_error(train.detach(), fx.ref.at("logits_train")) < kLogitTol);
  CHECK(loss.item() == doctest::Approx(fx.ref.at("loss").item()).epsilon(kLogitTol));
  loss.backward();
  // Some gradients are exactly zero in exact arithmetic: the key bias (and, without a cls token, the key
  // BatchNorm bias) shifts every score of a query by the same amount, which softmax ignores. Both engines
  // then return rounding noise whose size follows the gradients flowing around it (observed ≈ 4e-8 of the
  // largest gradient, i.e. a few u), not its own zero scale. So the bound is kGradTol of the tensor's own
  // scale plus kGradNoise = 1e-6 (≈ 16 u, 25× the observed noise) of the largest gradient in the model.
  double global = 0;
  for (const auto& p : m->parameters()) {
    auto v = fx.ref.at("grad." + p.name).to_vector<double>();
    for (double g : v) global = std::max(global, std::abs(g));
  }
  constexpr double kGradNoise = 1e-6;
  int checked = 0;
  for (const auto& p : m->parameters()) {
    const Tensor& ref = fx.ref.at("grad." + p.name);
    REQUIRE_MESSAGE(p.tensor.grad().defined(), p.name << " got no gradient");
    auto a = p.tensor.grad().to(Device::CPU).to_vector<double>(), b = ref.to_vector<double>();
    double err = 0, scale = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      err = std::max(err, std::abs(a[i] - b[i]));
      scale = std::max(scale, std::abs(b[i]));
    }
    INFO(p.name << ": gradient error " << err << ", scale " << scale << " (largest gradient " << global << ")");
    CHECK(err <= kGradTol * scale + kGradNoise * global);
    ++checked;
  }
  CHECK(checked == int(m->parameters().size()));
  // BatchNorm running statistics after the one train forward (CvT): same update, float32 statistics.
  for (const auto& e : m->entries()) {
    if (!e.is_buffer) continue;
    const Tensor& ref = fx.ref.at("after." + e.name);
    INFO(e.name);
    if (e.tensor.dtype() == DType::i64) CHECK(e.tensor.item() == ref.item());
    else CHECK(scaled_error(e.tensor, ref) < kLogitTol);
  }

  // Three AdamW steps with the Trainer's groups, from the fixture's weights.
  auto m2 = fx.model();
  m2->to(device);
  auto params = m2->parameters();
  std::vector<Tensor> tensors;
  for (const auto& p : params) tensors.push_back(p.tensor);
  AdamWOptions o;
  o.lr = 1e-3;
  AdamW opt(trainer_param_groups(params, 0.01), o);
  auto ref_losses = fx.ref.at("adamw_losses").to_vector<double>();
  for (size_t step = 0; step < ref_losses.size(); ++step) {
    opt.zero_grad();
    Tensor l = cross_entropy(m2->forward(x, true, gen), labels);
    // Adam's first steps move each weight by ≈ lr·sign(g) whatever |g| is, so a weight whose gradient is
    // rounding noise (the key biases above) may step differently in the two engines; its effect on the loss
    // is O(lr·|∂L/∂w|), negligible. Observed agreement is ~1e-5 relative; kLogitTol still has 10× margin
    // while one step changes the loss by 25-45%.
    INFO("step " << step << ": loss " << l.item() << " vs " << ref_losses[step]);
    CHECK(l.item() == doctest::Approx(ref_losses[step]).epsilon(kLogitTol));
    if (step + 1 == ref_losses.size()) break;
    l.backward();
    clip_grad_norm(tensors, 1.0);
    opt.step();
  }
  set_matmul_precision(precision);
}

TEST_CASE("parity with transformers: CvT") { check_parity("cvt.safetensors"); }
TEST_CASE("parity with transformers: ViT") { check_parity("vit.safetensors"); }
// The same fixtures through the CUDA backend (fp32), same tolerances: both engines compute in float32 and
// differ only in summation order, as the CPU path does. The fixtures' head dims (16, 12) run zero-padded
// in the fused attention.
TEST_CASE("parity with transformers on the GPU: CvT") {
  SKIP_WITHOUT_GPU();
  check_parity("cvt.safetensors", Device::CUDA);
}
TEST_CASE("parity with transformers on the GPU: ViT") {
  SKIP_WITHOUT_GPU();
  check_parity("vit.safetensors", Device::CUDA);
}

// Full-size CvT-13 and ViT-B/16 (random weights) against transformers on real MRI images, opt-in because it
// needs `python3 tools/make_model_fixtures.py --full DIR` first (hundreds of MB) and ~70 GMAC of CPU work:
//   TESSERA_MODEL_REFERENCE=DIR build/bin/test_models -tc='*full-size*'
// Same float32 argument as kLogitTol; K grows to 3072 and depth to 12 layers, which multiplies the predicted
// ~1e-6 by ≲ 10, still 10× inside 1e-4.
TEST_CASE("parity with transformers: full-size checkpoints (opt-in)") {
  const char* dir = std::getenv("TESSERA_MODEL_REFERENCE");
  if (!dir) {
    MESSAGE("skipped: set TESSERA_MODEL_REFERENCE to a folder written by make_model_fixtures.py --full");
    return;
  }
  for (const char* name : {"cvt-13", "vit-b16"}) {
    const std::string folder = std::string(dir) + "/" + name;
    auto m = load_model(folder);
    auto ref = load_safetensors(folder + "/reference.safetensors");
    Generator gen(0);
    NoGradGuard ng;
    Tensor logits = m->forward(ref.at("pixel_values"), false, gen);
    const double err = scaled_error(logits, ref.at("logits"));
    INFO(std::string(name) << ": logits " << logits.str() << " vs " << ref.at("logits").str() << ", error " << err);
    CHECK(err < kLogitTol);
    CHECK(bitwise_equal(argmax(logits, 1), argmax(ref.at("logits"), 1)));
  }
}

// Mixed precision, checked on the CPU with f64 standing in for bf16 (the CPU backend has no bf16): f32
// master weights computing in f64 must give exactly what an f64 model holding the same (f32-valued)
// weights gives — the casts of weights to f64 are exact, and the gradients come back to the f32 masters as
// the f64 gradients rounded once. BatchNorm runs in the masters' dtype (f32), so CvT is compared within
// f32 rounding; ViT (no BatchNorm) must match bit for bit.
TEST_CASE("mixed precision: f32 master weights computing in f64 match an f64 model") {
  for (const ModelConfig& config : {ModelConfig(tiny_vit()), ModelConfig(tiny_cvt())}) {
    const bool exact = std::holds_alternative<VitConfig>(config);
    INFO(model_type(config));
    auto mixed = make_model(config, 21);
    auto wide = make_model(config, DType::f64);
    wide->load_state_dict(mixed->state_dict(), "the f32 model");
    mixed->set_compute_dtype(DType::f64);
    CHECK(mixed->compute_dtype() == DType::f64);
    CHECK(mixed->dtype() == DType::f32);

    Tensor x = random_images(5, 2, 32, 32, DType::f64);
    Generator g1(3), g2(3);
    Tensor logits_mixed = mixed->forward(x, /*training=*/true, g1);  // f32: cast back for the loss
    Tensor logits_wide = wide->forward(x, /*training=*/true, g2);
    CHECK(logits_mixed.dtype() == DType::f32);
    if (exact) CHECK(logits_mixed.to_vector<float>() == logits_wide.to(DType::f32).to_vector<float>());
    else CHECK(scaled_error(logits_mixed, logits_wide) < 1e-5);
    // d(sum)/d(logits) = 1 on both sides: the same upstream gradient, so the weight gradients compare.
    sum(logits_mixed).backward();
    sum(logits_wide).backward();
    const auto pm = mixed->parameters(), pw = wide->parameters();
    // Key biases (and CvT's key BatchNorm biases) have an exactly zero gradient: they shift every score of
    // a row alike, which softmax ignores. Both sides hold rounding noise there, so CvT's comparison allows
    // an absolute floor of 1e-6 of the model's largest gradient.
    double largest = 0;
    for (const auto& p : pw) largest = std::max(largest, max(abs(p.tensor.grad())).item());
    for (size_t i = 0; i < pm.size(); ++i) {
      INFO(pm[i].name);
      REQUIRE(pm[i].tensor.grad().defined());
      CHECK(pm[i].tensor.grad().dtype() == DType::f32);
      if (exact) CHECK(pm[i].tensor.grad().to_vector<float>() == pw[i].tensor.grad().to(DType::f32).to_vector<float>());
      else CHECK(max(abs(pm[i].tensor.grad().to(DType::f64) - pw[i].tensor.grad())).item() <=
                 1e-4 * max(abs(pw[i].tensor.grad())).item() + 1e-6 * largest);
    }
  }
  auto m = make_model(tiny_vit(), 1);
  CHECK_THROWS_WITH(m->set_compute_dtype(DType::i64), doctest::Contains("not a float dtype"));
}

TEST_CASE("attention capture: every layer's and head's probabilities, without changing the outputs") {
  for (const ModelConfig& config : {ModelConfig(tiny_vit()), ModelConfig(tiny_cvt())}) {
    INFO(model_type(config));
    auto model = make_model(config, 8);
    Tensor x = random_images(3, 2, 32, 32);
    Generator g1(1), g2(1);
    const auto plain = model->forward(x, false, g1).to_vector<float>();
    AttentionCapture kept_all;
    const AttentionHooks capture_all = capture_attention(kept_all, {}, std::nullopt);
    const std::map<int64_t, Tensor>& all = kept_all.probs;
    model->set_attention_hooks(&capture_all);
    CHECK(model->forward(x, false, g2).to_vector<float>() == plain);  // recording changes nothing
    model->set_attention_hooks(nullptr);

    const bool vit = std::holds_alternative<VitConfig>(config);
    const size_t layers = vit ? 2 : 1 + 2 + 3;
    REQUIRE(all.size() == layers);
    for (size_t i = 0; i < layers; ++i) {
      REQUIRE(all.count(int64_t(i)) == 1);
      const Tensor& p = all.at(int64_t(i));
      REQUIRE(p.dim() == 4);
      CHECK(p.size(0) == 2);
      if (vit) {
        CHECK(p.shape() == Shape{2, 2, 17, 17});  // 2 heads, 16 patches + cls
      } else {
        // CvT stage s: H = W = 32 / 4 / 2^s tokens a side; keys from a stride-2 projection (+ cls at stage 2).
        const int64_t stage = i == 0 ? 0 : i < 3 ? 1 : 2, side = 8 >> stage, kv = (side + 1) / 2;
        const int64_t cls = stage == 2 ? 1 : 0;
        CHECK(p.shape() == Shape{2, tiny_cvt().num_heads[size_t(stage)], side * side + cls, kv * kv + cls});
      }
      // Rows are distributions.
      Tensor rows = sum(p, {-1});
      for (double r : rows.to_vector<double>()) CHECK(r == doctest::Approx(1.0).epsilon(1e-6));
      CHECK(-max(neg(p)).item() >= 0);  // no negative probability
    }
    AttentionCapture kept_some;
    const AttentionHooks capture_some = capture_attention(kept_some, {}, std::vector<int64_t>{1});
    const std::map<int64_t, Tensor>& some = kept_some.probs;
    model->set_attention_hooks(&capture_some);
    model->forward(x, false, g2);
    model->set_attention_hooks(nullptr);
    REQUIRE(some.size() == 1);
    REQUIRE(some.count(1) == 1);
    CHECK(some.at(1).to_vector<float>() == all.at(1).to_vector<float>());
  }
}

TEST_CASE("attention hooks: the composed path equals the fused one, gates remove heads, gate gradients are head importance") {
  for (const ModelConfig& config : {ModelConfig(tiny_vit()), ModelConfig(tiny_cvt())}) {
    INFO(model_type(config));
    const bool vit = std::holds_alternative<VitConfig>(config);
    auto model = make_model(config, 8);
    const Tensor x = random_images(5, 2, 32, 32);
    const size_t layers = vit ? 2 : 1 + 2 + 3;
    Generator gen(1);
    // Logits and every parameter's gradient of Σ logits², under `hooks`.
    auto run = [&](const AttentionHooks* hooks) {
      for (const auto& p : model->parameters()) Tensor(p.tensor).zero_grad();
      model->set_attention_hooks(hooks);
      const Tensor y = model->forward(x, false, gen);
      sum(mul(y, y)).backward();
      model->set_attention_hooks(nullptr);
      std::vector<double> grads;
      for (const auto& p : model->parameters())
        for (double g : p.tensor.grad().to_vector<double>()) grads.push_back(g);
      return std::pair{y.to_vector<double>(), grads};
    };
    auto max_rel = [](const std::vector<double>& a, const std::vector<double>& b) {
      double d = 0, s = 0;
      for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::abs(a[i] - b[i])), s = std::max(s, std::abs(b[i]));
      return d / s;
    };
    const auto [fused_logits, fused_grads] = run(nullptr);

    // A backward hook runs the composition (scores, softmax, product) instead of the fused op: equal up to
    // float32 rounding, whose relative error after these few layers is ~1e-6 of the values' scale (as for
    // the parity tests); 1e-4 still fails on any missing scale, transpose or head mix-up (O(1)).
    std::vector<std::pair<int64_t, AttentionPart>> seen;
    AttentionHooks watch;
    watch.backward = [&](int64_t layer, AttentionPart part, const Tensor&) { seen.emplace_back(layer, part); };
    const auto [composed_logits, composed_grads] = run(&watch);
    CHECK(max_rel(composed_logits, fused_logits) <= 1e-4);
    CHECK(max_rel(composed_grads, fused_grads) <= 1e-4);
    // Every part of every layer, each layer's context before its probabilities before its query.
    REQUIRE(seen.size() == layers * 5);
    for (size_t l = 0; l < layers; ++l) {
      auto at = [&](AttentionPart part) {
        return std::find(seen.begin(), seen.end(), std::pair{int64_t(l), part}) - seen.begin();
      };
      for (AttentionPart part : {AttentionPart::Key, AttentionPart::Value}) CHECK(at(part) < int64_t(seen.size()));
      CHECK(at(AttentionPart::Context) < at(AttentionPart::Probs));
      CHECK(at(AttentionPart::Probs) < at(AttentionPart::Query));
    }

    // Gates of 1 change nothing (the fused path, times exactly 1).
    AttentionHooks ones;
    for (size_t l = 0; l < layers; ++l) ones.gates[int64_t(l)] = Tensor::ones({vit ? 2 : tiny_cvt().num_heads[l == 0 ? 0 : l < 3 ? 1 : 2]});
    CHECK(run(&ones).first == fused_logits);

    // A zero gate removes head 0 of layer 1 (both models have 2 heads there): its context is 0 in forward.
    AttentionHooks mask;
    mask.layers = {1};
    mask.gates[1] = Tensor::from(std::vector<float>{0, 1}, {2});
    Tensor context;
    mask.forward = [&](int64_t, AttentionPart part, const Tensor& t) {
      if (part == AttentionPart::Context) context = t;
    };
    CHECK(run(&mask).first != fused_logits);
    REQUIRE(context.defined());
    CHECK(max(abs(context.select(1, 0))).item() == 0.0);
    CHECK(max(abs(context.select(1, 1))).item() > 0.0);

    // A (B, heads) gate that requires grad receives ∂L/∂g[b, h] = Σ ⟨ctx[b, h], ∂L/∂ctx[b, h]⟩ (at g = 1 the
    // gated context is the context), computed here from the hooks' own forward and backward views.
    AttentionHooks importance;
    importance.layers = {1};
    Tensor gate = Tensor::ones({2, 2});
    gate.set_requires_grad(true);
    importance.gates[1] = gate;
    Tensor dcontext;
    importance.forward = mask.forward;
    importance.backward = [&](int64_t, AttentionPart part, const Tensor& g) {
      if (part == AttentionPart::Context) dcontext = g;
    };
    run(&importance);
    REQUIRE(dcontext.defined());
    // The gate's gradient is a float32 sum of those Tq·D products: its error is ≲ Tq·D·2^-24 of the sum of
    // their magnitudes, < 1e-5 of it at these sizes.
    const Tensor terms = mul(context.to(DType::f64), dcontext.to(DType::f64));
    const auto want = sum(terms, {2, 3}).to_vector<double>(), scale = sum(abs(terms), {2, 3}).to_vector<double>();
    const auto got = gate.grad().to_vector<double>();
    REQUIRE(got.size() == 4);
    for (size_t i = 0; i < 4; ++i) CHECK(std::abs(got[i] - want[i]) <= 1e-5 * scale[i]);

    // A gate of the wrong shape or on another device is refused, naming the layer.
    AttentionHooks bad;
    bad.gates[0] = Tensor::ones({3, 1});
    model->set_attention_hooks(&bad);
    CHECK_THROWS_WITH_AS(model->forward(x, false, gen), doctest::Contains("attention gate of layer 0: expected"), TensorError);
    model->set_attention_hooks(nullptr);
  }
}

// The CPU's bf16 path (kernels/cpu/bf16.cpp and the bf16 GEMM) at model level: mixed precision as a GPU
// runs it, held to the rounding-error model's tolerance (tests/bf16_step.h).
TEST_CASE("models: a bf16 training step of CvT and of ViT agrees with fp32 on the CPU") {
  tessera::testing::check_bf16_steps(Device::CPU);
}

// Mixed precision's casts keep a dense tensor's memory order: CvT's channels-last token grid stays
// channels-last through the fp32 batch norm (else its kernels see NCHW and transpose), values and
// gradients unchanged.
TEST_CASE("cast_to keeps a channels-last tensor channels-last, values and gradient exact") {
  Generator g(3);
  Tensor nhwc = g.uniform({2, 3, 4, 5}, -1, 1, DType::f32);  // memory [N, H, W, C]
  nhwc.set_requires_grad(true);
  Tensor x = nhwc.permute({0, 3, 1, 2});                                             // viewed [N, C, H, W]
  Tensor y = cast_to(x, DType::bf16);
  CHECK(y.shape() == x.shape());
  CHECK(y.strides() == x.strides());
  CHECK(y.to(DType::f64).to_vector<double>() == x.to(DType::bf16).to(DType::f64).to_vector<double>());
  sum(mul(y.to(DType::f32), Tensor::scalar(2.0, DType::f32))).backward();
  for (double v : nhwc.grad().to_vector<double>()) CHECK(v == 2.0);
  CHECK(cast_to(nhwc, DType::bf16).is_contiguous());  // a contiguous tensor stays contiguous
}
