#include "models/config.h"

#include <cmath>
#include <cstdio>
#include <sstream>

#include "engine/core/fileio.h"

namespace tessera::models {

using nlohmann::json;

std::vector<std::string> default_labels(int64_t n) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) out.push_back("LABEL_" + std::to_string(i));
  return out;
}

int64_t num_labels(const ModelConfig& c) {
  return std::visit([](const auto& x) { return int64_t(x.id2label.size()); }, c);
}

int64_t num_channels(const ModelConfig& c) {
  return std::visit([](const auto& x) { return x.num_channels; }, c);
}

void set_labels(ModelConfig& c, std::vector<std::string> id2label) {
  std::visit([&](auto& x) { x.id2label = std::move(id2label); }, c);
}

const char* model_type(const ModelConfig& c) { return std::holds_alternative<CvtConfig>(c) ? "cvt" : "vit"; }

// ---------------------------------------------------------------- presets
// Checked against the hub configs: microsoft/cvt-13 (= CvtConfig's defaults); cvt-21 and cvt-w24 differ only
// where transformers' convert_cvt_original_pytorch_checkpoint_to_pytorch.py sets them (depth [1,4,16]; embed
// [192,768,1024], heads [3,12,16], depth [2,2,20]). google/vit-base-patch16-224 (768/12/12/3072) and
// google/vit-large-patch16-224 (1024/24/16/4096); ViT-Ti/16 and ViT-S/16 are the DeiT/AugReg sizes
// (192/3 heads/768 and 384/6 heads/1536, 12 layers). All: patch 16, image 224, layer_norm_eps 1e-12.
ModelConfig preset_config(const std::string& name) {
  if (name.rfind("cvt-", 0) == 0) {
    CvtConfig c;
    if (name == "cvt-13") {
    } else if (name == "cvt-21") {
      c.depth = {1, 4, 16};
    } else if (name == "cvt-tiny") {
      // tessera's own small CvT (not a published model) for quick CPU runs: CvT-13's design at half the
      // width and fewer blocks, 2.2 M parameters with 4 classes (stage s still needs depth > s: see validate()).
      c.embed_dim = {32, 96, 192};
      c.num_heads = {1, 3, 3};  // head sizes 32, 32, 64: ones the CUDA attention kernel has
      c.depth = {1, 2, 4};
    } else if (name == "cvt-w24") {
      c.embed_dim = {192, 768, 1024};
      c.num_heads = {3, 12, 16};
      c.depth = {2, 2, 20};
    } else {
      throw ConfigError("unknown model preset '" + name + "'");
    }
    c.id2label = default_labels(1000);
    return c;
  }
  VitConfig v;
  auto set = [&](int64_t hidden, int64_t heads, int64_t layers, int64_t mlp) {
    v.hidden_size = hidden, v.num_attention_heads = heads, v.num_hidden_layers = layers, v.intermediate_size = mlp;
  };
  if (name == "vit-ti16") set(192, 3, 12, 768);
  else if (name == "vit-s16") set(384, 6, 12, 1536);
  else if (name == "vit-b16") set(768, 12, 12, 3072);
  else if (name == "vit-l16") set(1024, 16, 24, 4096);
  else {
    std::string all;
    for (const auto& n : preset_names()) all += (all.empty() ? "" : ", ") + n;
    throw ConfigError("unknown model preset '" + name + "' (known: " + all + ")");
  }
  v.id2label = default_labels(1000);
  return v;
}

std::vector<std::string> preset_names() {
  return {"cvt-tiny", "cvt-13", "cvt-21", "cvt-w24", "vit-ti16", "vit-s16", "vit-b16", "vit-l16"};
}

// ---------------------------------------------------------------- parsing
namespace {

// Each config's fields, once: parse_config reads them, config_to_json writes them and validate checks that
// every per-stage list (the CvT vectors) has three entries, all from these lists. id2label is apart: it is
// read from two keys (id2label, num_labels) and written as two (id2label, label2id).
template <typename C, typename F>  // C: CvtConfig or const CvtConfig
void cvt_fields(C& c, F&& f) {
  f("patch_sizes", c.patch_sizes), f("patch_stride", c.patch_stride), f("patch_padding", c.patch_padding);
  f("embed_dim", c.embed_dim), f("num_heads", c.num_heads), f("depth", c.depth), f("mlp_ratio", c.mlp_ratio);
  f("attention_drop_rate", c.attention_drop_rate), f("drop_rate", c.drop_rate);
  f("drop_path_rate", c.drop_path_rate), f("qkv_bias", c.qkv_bias), f("cls_token", c.cls_token);
  f("qkv_projection_method", c.qkv_projection_method), f("kernel_qkv", c.kernel_qkv);
  f("padding_kv", c.padding_kv), f("stride_kv", c.stride_kv), f("padding_q", c.padding_q);
  f("stride_q", c.stride_q), f("num_channels", c.num_channels), f("initializer_range", c.initializer_range);
  f("layer_norm_eps", c.layer_norm_eps);
}

template <typename C, typename F>  // C: VitConfig or const VitConfig
void vit_fields(C& c, F&& f) {
  f("hidden_size", c.hidden_size), f("num_hidden_layers", c.num_hidden_layers);
  f("num_attention_heads", c.num_attention_heads), f("intermediate_size", c.intermediate_size);
  f("hidden_act", c.hidden_act), f("hidden_dropout_prob", c.hidden_dropout_prob);
  f("attention_probs_dropout_prob", c.attention_probs_dropout_prob), f("initializer_range", c.initializer_range);
  f("layer_norm_eps", c.layer_norm_eps), f("image_size", c.image_size), f("patch_size", c.patch_size);
  f("num_channels", c.num_channels), f("qkv_bias", c.qkv_bias);
}

template <typename T>
struct is_list : std::false_type {};
template <typename T>
struct is_list<std::vector<T>> : std::true_type {};

// Reads optional fields of one JSON object, collecting every problem so one error can name them all.
struct Reader {
  const json& j;
  std::string source;
  std::vector<std::string> problems;

  template <typename T>
  bool get_scalar(const json& v, T& out) {
    if constexpr (std::is_same_v<T, bool>) {
      if (!v.is_boolean()) return false;
      out = v.get<bool>();
    } else if constexpr (std::is_same_v<T, int64_t>) {
      if (!v.is_number_integer()) return false;
      out = v.get<int64_t>();
    } else if constexpr (std::is_same_v<T, double>) {
      if (!v.is_number()) return false;
      out = v.get<double>();
    } else {
      if (!v.is_string()) return false;
      out = v.get<std::string>();
    }
    return true;
  }
  template <typename T>
  static const char* type_name() {
    if constexpr (std::is_same_v<T, bool>) return "a boolean";
    else if constexpr (std::is_same_v<T, int64_t>) return "an integer";
    else if constexpr (std::is_same_v<T, double>) return "a number";
    else return "a string";
  }
  template <typename T>
  void field(const char* name, T& out) {
    if (!j.contains(name) || j[name].is_null()) return;
    if (!get_scalar(j[name], out)) problems.push_back(std::string("field '") + name + "' must be " + type_name<T>());
  }
  // Per-stage lists: CvtConfig indexes them by stage, so a list is required (a scalar is an error).
  template <typename T>
  void list(const char* name, std::vector<T>& out) {
    if (!j.contains(name) || j[name].is_null()) return;
    const json& v = j[name];
    if (!v.is_array()) {
      problems.push_back(std::string("field '") + name + "' must be a list of " + type_name<T>() + " values");
      return;
    }
    std::vector<T> r;
    for (size_t i = 0; i < v.size(); ++i) {
      T x{};
      if (!get_scalar(v[i], x)) {
        problems.push_back(std::string("field '") + name + "[" + std::to_string(i) + "]' must be " + type_name<T>());
        return;
      }
      r.push_back(x);
    }
    out = r;
  }
  void list(const char* name, std::vector<bool>& out) {
    std::vector<int64_t> tmp;
    if (!j.contains(name) || j[name].is_null()) return;
    const json& v = j[name];
    if (!v.is_array()) {
      problems.push_back(std::string("field '") + name + "' must be a list of booleans");
      return;
    }
    std::vector<bool> r;
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_boolean()) {
        problems.push_back(std::string("field '") + name + "[" + std::to_string(i) + "]' must be a boolean");
        return;
      }
      r.push_back(v[i].get<bool>());
    }
    out = r;
  }

  // A field of either kind, by its type.
  template <typename T>
  void read(const char* name, T& out) {
    if constexpr (is_list<T>::value) list(name, out);
    else field(name, out);
  }

  // id2label {"0": "name", ...} with keys 0..n-1; else num_labels; else transformers' default of 2.
  std::vector<std::string> labels() {
    int64_t n = -1;
    field("num_labels", n);
    if (j.contains("id2label") && !j["id2label"].is_null()) {
      const json& m = j["id2label"];
      if (!m.is_object()) {
        problems.push_back("field 'id2label' must be an object {\"0\": \"name\", ...}");
        return {};
      }
      std::vector<std::string> out(m.size());
      for (auto it = m.begin(); it != m.end(); ++it) {
        size_t pos = 0;
        long long id = -1;
        try {
          id = std::stoll(it.key(), &pos);
        } catch (...) {
          pos = 0;
        }
        if (pos != it.key().size() || id < 0 || id >= int64_t(m.size())) {
          problems.push_back("field 'id2label' has key '" + it.key() + "'; keys must be 0.." +
                             std::to_string(m.size() - 1));
          continue;
        }
        if (it.value().is_string()) out[size_t(id)] = it.value().get<std::string>();
        else out[size_t(id)] = it.value().dump();  // some hub configs map ids to numbers
      }
      if (n >= 0 && n != int64_t(m.size()))
        problems.push_back("field 'num_labels' is " + std::to_string(n) + " but 'id2label' has " +
                           std::to_string(m.size()) + " entries");
      return out;
    }
    return default_labels(n >= 0 ? n : 2);
  }
};

}  // namespace

ModelConfig parse_config(const json& j, const std::string& source) {
  if (!j.is_object()) throw ConfigError(source + ": config must be a JSON object");
  if (!j.contains("model_type") || !j["model_type"].is_string())
    throw ConfigError(source + ": field 'model_type' is missing (expected \"cvt\" or \"vit\")");
  const std::string type = j["model_type"].get<std::string>();
  Reader r{j, source, {}};
  ModelConfig result;
  auto read = [&](const char* name, auto& v) { r.read(name, v); };
  if (type == "cvt") {
    CvtConfig c;
    cvt_fields(c, read);
    c.id2label = r.labels();
    result = c;
  } else if (type == "vit") {
    VitConfig c;
    vit_fields(c, read);
    c.id2label = r.labels();
    result = c;
  } else {
    throw ConfigError(source + ": field 'model_type' is \"" + type + "\"; only \"cvt\" and \"vit\" are supported");
  }
  if (!r.problems.empty()) {
    std::string msg = source + ": bad config";
    for (const auto& p : r.problems) msg += "; " + p;
    throw ConfigError(msg);
  }
  validate(result, source);
  return result;
}

namespace {

// Sane maxima: far above every published CvT and ViT (the widest, ViT-H, has 1280 features and 32 layers),
// low enough that a typo in config.json is refused by name instead of asking for terabytes.
constexpr int64_t kMaxWidth = 65536;        // embed_dim, hidden_size
constexpr int64_t kMaxMlpWidth = 262144;    // intermediate_size
constexpr int64_t kMaxHeads = 1024;         // num_heads, num_attention_heads
constexpr int64_t kMaxDepth = 1024;         // depth (blocks per stage), num_hidden_layers
constexpr int64_t kMaxKernel = 1024;        // patch sizes, strides, padding, kernel_qkv
constexpr int64_t kMaxImageSize = 16384;    // image_size
constexpr int64_t kMaxChannels = 16;        // num_channels
constexpr int64_t kMaxLabels = 1'000'000;   // num_labels
constexpr double kMaxMlpRatio = 64;         // mlp_ratio
// The parameter count a config may ask for: 4e9 fp32 weights are 16 GB before gradients and AdamW's two
// moments (64 GB in all), beyond the memory of any one device this project runs on.
constexpr double kMaxParameters = 4e9;

// The parameter count, from the layer shapes (in double: the bounds above still allow products past
// int64), with the part that dominates it named for the error. Within a few percent of the model's own
// count; only the order of magnitude matters here.
struct Estimate {
  double total = 0, largest = 0;
  std::string largest_from;
  void add(double n, const std::string& from) {
    total += n;
    if (n > largest) largest = n, largest_from = from;
  }
};

Estimate estimate_parameters(const ModelConfig& mc) {
  Estimate e;
  const double labels = double(num_labels(mc));
  if (const auto* c = std::get_if<CvtConfig>(&mc)) {
    double in = double(c->num_channels), width = in;
    for (size_t s = 0; s < 3; ++s) {
      const double d = double(c->embed_dim[s]), k = double(c->patch_sizes[s]), q = double(c->kernel_qkv[s]);
      const double mlp = d * c->mlp_ratio[s];
      std::string at = "[";  // in steps, as in validate (GCC 12's -Wrestrict false positive)
      at += std::to_string(s);
      at += "]";
      e.add(in * d * k * k + 3 * d, "patch_sizes" + at + " x embed_dim" + at);
      // per block: three depthwise projections with batch norm, q/k/v/out, the MLP, two layer norms
      e.add(double(c->depth[s]) * (3 * (d * q * q + 2 * d) + 4 * (d * d + d) + 2 * d * mlp + mlp + d + 4 * d),
            "depth" + at + " x embed_dim" + at + " x mlp_ratio" + at);
      in = width = d;
    }
    e.add(width * labels + labels + 3 * width, "num_labels");
  } else {
    const auto& v = std::get<VitConfig>(mc);
    const double h = double(v.hidden_size), p = double(v.patch_size), m = double(v.intermediate_size);
    const double tokens = (double(v.image_size) / p) * (double(v.image_size) / p) + 1;
    e.add(double(v.num_channels) * p * p * h + h, "patch_size x hidden_size");
    e.add(tokens * h + h, "image_size / patch_size");
    e.add(double(v.num_hidden_layers) * (4 * (h * h + h) + 2 * h * m + m + h + 4 * h),
          "num_hidden_layers x hidden_size x intermediate_size");
    e.add(h * labels + labels + 2 * h, "num_labels");
  }
  return e;
}

}  // namespace

void validate(const ModelConfig& mc, const std::string& source) {
  std::vector<std::string> p;
  // An integer field in [lo, hi] (names carry their stage: "depth[2]").
  auto in_range = [&](const std::string& name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      p.push_back("field '" + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " +
                  std::to_string(v));
  };
  // A probability-like rate in [0, 1); written as a negation so that NaN fails too.
  auto rate = [&](const std::string& name, double v) {
    if (!(v >= 0 && v < 1)) p.push_back("field '" + name + "' must be in [0, 1)");
  };
  auto eps = [&](double v) {
    if (!(std::isfinite(v) && v > 0)) p.push_back("field 'layer_norm_eps' must be a finite number > 0");
  };
  if (const auto* c = std::get_if<CvtConfig>(&mc)) {
    auto stages = [&](const char* name, size_t n) {
      if (n != 3) p.push_back(std::string("field '") + name + "' must have 3 entries (one per stage), has " +
                              std::to_string(n));
    };
    cvt_fields(*c, [&](const char* name, const auto& v) {
      if constexpr (is_list<std::decay_t<decltype(v)>>::value) stages(name, v.size());
    });
    in_range("num_channels", c->num_channels, 1, kMaxChannels);
    eps(c->layer_norm_eps);
    if (p.empty()) {
      for (size_t s = 0; s < 3; ++s) {
        std::string at = "[";  // built in steps: GCC 12 warns (-Wrestrict, a false positive) on "[" + s + "]"
        at += std::to_string(s);
        at += "]";
        in_range("embed_dim" + at, c->embed_dim[s], 1, kMaxWidth);
        in_range("num_heads" + at, c->num_heads[s], 1, kMaxHeads);
        if (c->embed_dim[s] > 0 && c->num_heads[s] > 0 && c->embed_dim[s] % c->num_heads[s] != 0)
          p.push_back("embed_dim" + at + " = " + std::to_string(c->embed_dim[s]) + " must be a positive multiple of num_heads" +
                      at + " = " + std::to_string(c->num_heads[s]));
        if (c->depth[s] < 1 || c->depth[s] > kMaxDepth) in_range("depth" + at, c->depth[s], 1, kMaxDepth);
        // transformers' CvtStage indexes linspace(0, drop_path_rate[s], depth[s]) by the stage number.
        else if (c->depth[s] <= int64_t(s))
          p.push_back("depth" + at + " = " + std::to_string(c->depth[s]) + " must be > " + std::to_string(s) +
                      ": transformers picks the stage's drop path rate as linspace(0, rate, depth)[stage]");
        if (c->qkv_projection_method[s] != "dw_bn")
          p.push_back("qkv_projection_method" + at + " = \"" + c->qkv_projection_method[s] +
                      "\" is not supported (only \"dw_bn\")");
        if (c->attention_drop_rate[s] != 0)
          p.push_back("attention_drop_rate" + at + " must be 0 (dropout on attention probabilities is not supported)");
        if (!(c->mlp_ratio[s] > 0 && c->mlp_ratio[s] <= kMaxMlpRatio))
          p.push_back("field 'mlp_ratio" + at + "' must be in (0, 64]");
        if (c->cls_token[s] && s != 2) p.push_back("cls_token" + at + " must be false: only the last stage may have one");
        rate("drop_path_rate" + at, c->drop_path_rate[s]);
        rate("drop_rate" + at, c->drop_rate[s]);
        in_range("patch_sizes" + at, c->patch_sizes[s], 1, kMaxKernel);
        in_range("patch_stride" + at, c->patch_stride[s], 1, kMaxKernel);
        in_range("patch_padding" + at, c->patch_padding[s], 0, kMaxKernel);
        in_range("kernel_qkv" + at, c->kernel_qkv[s], 1, kMaxKernel);
        in_range("stride_kv" + at, c->stride_kv[s], 1, kMaxKernel);
        in_range("stride_q" + at, c->stride_q[s], 1, kMaxKernel);
        in_range("padding_kv" + at, c->padding_kv[s], 0, kMaxKernel);
        in_range("padding_q" + at, c->padding_q[s], 0, kMaxKernel);
      }
    }
  } else {
    const auto& v = std::get<VitConfig>(mc);
    in_range("hidden_size", v.hidden_size, 1, kMaxWidth);
    in_range("num_hidden_layers", v.num_hidden_layers, 1, kMaxDepth);
    in_range("num_attention_heads", v.num_attention_heads, 1, kMaxHeads);
    in_range("intermediate_size", v.intermediate_size, 1, kMaxMlpWidth);
    in_range("image_size", v.image_size, 1, kMaxImageSize);
    in_range("patch_size", v.patch_size, 1, kMaxKernel);
    in_range("num_channels", v.num_channels, 1, kMaxChannels);
    eps(v.layer_norm_eps);
    if (v.num_attention_heads > 0 && v.hidden_size % v.num_attention_heads != 0)
      p.push_back("hidden_size " + std::to_string(v.hidden_size) + " is not a multiple of num_attention_heads " +
                  std::to_string(v.num_attention_heads));
    if (v.hidden_act != "gelu") p.push_back("field 'hidden_act' is \"" + v.hidden_act + "\"; only \"gelu\" (erf) is supported");
    if (v.attention_probs_dropout_prob != 0)
      p.push_back("field 'attention_probs_dropout_prob' must be 0 (dropout on attention probabilities is not supported)");
    rate("hidden_dropout_prob", v.hidden_dropout_prob);
    if (v.patch_size > 0 && v.image_size % v.patch_size != 0)
      p.push_back("image_size " + std::to_string(v.image_size) + " is not a multiple of patch_size " +
                  std::to_string(v.patch_size));
  }
  in_range("num_labels", num_labels(mc), 1, kMaxLabels);
  // Before anything is allocated: a config within every bound can still multiply to more than any device holds.
  if (p.empty()) {
    const Estimate e = estimate_parameters(mc);
    if (e.total > kMaxParameters) {
      char text[160];
      std::snprintf(text, sizeof text, "about %.2g parameters (%.0f GB as fp32), over the %.0g this build accepts; ",
                    e.total, e.total * 4 / 1e9, kMaxParameters);
      p.push_back(text + ("most from " + e.largest_from));
    }
  }
  if (!p.empty()) {
    std::string msg = source + ": bad " + model_type(mc) + " config";
    for (const auto& s : p) msg += "; " + s;
    throw ConfigError(msg);
  }
}

ModelConfig load_config(const std::string& path) {
  try {
    return parse_config(read_json(path), path);
  } catch (const FileError& e) {
    throw ConfigError(e.what());  // callers tell a bad config from other failures by its type
  }
}

json config_to_json(const ModelConfig& mc) {
  json j;
  json id2label = json::object(), label2id = json::object();
  std::visit(
      [&](const auto& c) {
        for (size_t i = 0; i < c.id2label.size(); ++i) {
          id2label[std::to_string(i)] = c.id2label[i];
          label2id[c.id2label[i]] = int64_t(i);
        }
      },
      mc);
  auto write = [&](const char* name, const auto& v) { j[name] = v; };
  if (const auto* c = std::get_if<CvtConfig>(&mc)) {
    j = {{"model_type", "cvt"}, {"architectures", {"CvtForImageClassification"}}};
    cvt_fields(*c, write);
  } else {
    const auto& v = std::get<VitConfig>(mc);
    j = {{"model_type", "vit"}, {"architectures", {"ViTForImageClassification"}}, {"encoder_stride", v.patch_size}};
    vit_fields(v, write);
  }
  j["id2label"] = id2label;
  j["label2id"] = label2id;
  j["torch_dtype"] = "float32";
  return j;
}

}  // namespace tessera::models
