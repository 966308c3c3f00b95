// Model configurations: Hugging Face `config.json` of model_type "cvt" and "vit", and named presets.
//
// Fields and defaults are those of transformers' CvtConfig / ViTConfig (a field missing from config.json
// takes the class default, as PretrainedConfig does). Fields these models do not use are ignored; a field
// of the wrong type or an unsupported value is an error naming the file and the field.
#pragma once
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera::models {

struct CvtConfig {
  // Per stage (three entries each).
  std::vector<int64_t> patch_sizes{7, 3, 3}, patch_stride{4, 2, 2}, patch_padding{2, 1, 1};
  std::vector<int64_t> embed_dim{64, 192, 384}, num_heads{1, 3, 6}, depth{1, 2, 10};
  std::vector<double> mlp_ratio{4, 4, 4}, attention_drop_rate{0, 0, 0}, drop_rate{0, 0, 0};
  std::vector<double> drop_path_rate{0, 0, 0.1};
  std::vector<bool> qkv_bias{true, true, true}, cls_token{false, false, true};
  std::vector<std::string> qkv_projection_method{"dw_bn", "dw_bn", "dw_bn"};
  std::vector<int64_t> kernel_qkv{3, 3, 3}, padding_kv{1, 1, 1}, stride_kv{2, 2, 2};
  std::vector<int64_t> padding_q{1, 1, 1}, stride_q{1, 1, 1};
  int64_t num_channels = 3;
  double initializer_range = 0.02;
  double layer_norm_eps = 1e-12;  // in the config but unused by the model: CvT's LayerNorms use 1e-5
  std::vector<std::string> id2label;  // num_labels = id2label.size()
};

struct VitConfig {
  int64_t hidden_size = 768, num_hidden_layers = 12, num_attention_heads = 12, intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0, attention_probs_dropout_prob = 0;
  double initializer_range = 0.02, layer_norm_eps = 1e-12;
  int64_t image_size = 224, patch_size = 16, num_channels = 3;
  bool qkv_bias = true;
  std::vector<std::string> id2label;
};

using ModelConfig = std::variant<CvtConfig, VitConfig>;

struct ConfigError : std::runtime_error { using std::runtime_error::runtime_error; };

// "LABEL_0", ... as transformers names labels it was not given.
std::vector<std::string> default_labels(int64_t n);
int64_t num_labels(const ModelConfig& c);
int64_t num_channels(const ModelConfig& c);  // input planes (3: RGB, 1: grayscale)
void set_labels(ModelConfig& c, std::vector<std::string> id2label);
const char* model_type(const ModelConfig& c);  // "cvt" / "vit"

// Presets: cvt-13, cvt-21, cvt-w24, vit-ti16, vit-s16, vit-b16, vit-l16 (1000 ImageNet classes, named
// LABEL_i; the hub configs' ImageNet names are not copied here).
ModelConfig preset_config(const std::string& name);
std::vector<std::string> preset_names();

// Parses a config.json; `source` names it in errors. Validates the architecture's invariants (three stages
// in CvT, heads dividing the width, ...).
ModelConfig parse_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_config(const std::string& path);
// The config as transformers writes it (model_type, architectures, every field above, id2label/label2id).
nlohmann::json config_to_json(const ModelConfig& c);
// Throws ConfigError naming `source` and every violated invariant.
void validate(const ModelConfig& c, const std::string& source);

}  // namespace tessera::models
