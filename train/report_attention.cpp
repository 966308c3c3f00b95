#include "train/report_attention.h"

#include <exception>
#include <filesystem>

#include "data/image.h"
#include "data/preprocess.h"
#include "models/attention_maps.h"
#include "models/model.h"
#include "train/attention_page.h"
#include "train/checkpoint.h"

namespace tessera::train {

ReportAttention report_attention(const Eval& e, const std::string& run_dir) {
  ReportAttention out;
  if (!figures_unavailable().empty()) {
    out.note = "No attention maps: " + std::string(figures_unavailable()) + ".";
    return out;
  }
  std::unique_ptr<models::Model> model;
  ProcessorConfig processor;
  try {
    const std::filesystem::path in_run = std::filesystem::path(run_dir) / std::filesystem::path(e.checkpoint).filename();
    const std::string dir = resolve_checkpoint(std::filesystem::exists(in_run) ? in_run.string() : e.checkpoint);
    model = models::load_model(dir);
    processor = checkpoint_processor(dir, model->config());
  } catch (const std::exception& err) {
    out.note = std::string("No attention maps: the checkpoint could not be read (") + err.what() + ").";
    return out;
  }
  const auto layouts = models::attention_layouts(model->config(), processor.height, processor.width);
  const std::vector<int64_t> layers = models::rollout_layers(layouts);
  if (layers.empty()) {
    out.note = "No attention maps: the model's last stage has no cls token.";
    return out;
  }
  std::vector<models::AttentionLayout> rolled;
  for (int64_t l : layers) rolled.push_back(layouts[size_t(l)]);
  const models::AttentionLayout& last = rolled.back();
  out.method = "Over layers " + std::to_string(layers.front()) + "–" + std::to_string(layers.back()) +
               " of the best checkpoint, explaining each image's predicted class c. Rollout (Abnar & Zuidema 2020): "
               "Ā_l = mean over heads of A_l; R = Π norm_rows(Ā_l + I). Relevance (Chefer et al. 2021): "
               "Ā_l = mean over heads of ReLU(∂y_c/∂A_l ⊙ A_l); R = Π (I + Ā_l). The map is R[cls, patches] on the " +
               std::to_string(last.query_rows) + "×" + std::to_string(last.query_cols) + " grid, scaled to max 1" +
               (last.stride > 1 ? "; CvT's key-grid attention is carried to the query grid through the key "
                                  "convolution's receptive fields (tessera's method, models/README.md)."
                                : ".");
  constexpr size_t kBatch = 8;
  const std::vector<size_t> shown = shown_predictions(e);
  for (size_t start = 0; start < shown.size(); start += kBatch) {
    std::vector<Image> images;
    std::vector<const Prediction*> preds;
    for (size_t i = start; i < std::min(shown.size(), start + kBatch); ++i) {
      const Prediction& p = e.predictions[shown[i]];
      try {
        images.push_back(decode_image(p.path));
        preds.push_back(&p);
      } catch (const std::exception&) {  // the thumbnails say which images could not be read
      }
    }
    if (images.empty()) continue;
    const Tensor pixels = preprocess_batch(images, processor);
    std::vector<int64_t> classes;
    for (const Prediction* p : preds) classes.push_back(p->pred);
    const models::AttentionGradients g = models::attention_gradients(*model, pixels, layers, classes);
    std::vector<Tensor> probs, grads;
    for (int64_t l : layers) probs.push_back(g.probs.at(l)), grads.push_back(g.grads.at(l));
    models::MapOptions rollout, relevance;
    relevance.method = models::MapMethod::Relevance;
    const Tensor rollout_map = models::attention_map(probs, {}, rolled, rollout).map;
    const Tensor relevance_map = models::attention_map(probs, grads, rolled, relevance).map;
    for (size_t b = 0; b < preds.size(); ++b) {
      const InputImage im = input_image(pixels, int64_t(b));
      auto draw = [&](const Tensor& maps, const char* title) {
        return heat_map_png(im, query_grid_map(maps.select(0, int64_t(b)), last), title).value_or("");
      };
      out.by_path[preds[b]->path] = {draw(rollout_map, "rollout"), draw(relevance_map, "relevance")};
    }
  }
  return out;
}

}  // namespace tessera::train
