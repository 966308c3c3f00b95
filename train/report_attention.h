// The report's attention section: for the Testing images it shows, where the best checkpoint looked —
// attention rollout and relevance (models/attention_maps.h) over each image, explaining the predicted class.
#pragma once
#include <map>
#include <string>
#include <vector>

#include "train/report_files.h"

namespace tessera::train {

struct ReportAttention {
  struct Overlays {
    std::string rollout_png, relevance_png;  // PNG bytes
  };
  std::map<std::string, Overlays> by_path;  // keyed by Prediction::path
  std::string method;                       // the formulas, in words, for the page
  std::string note;                         // why there are no maps (no checkpoint, no cls token, no cairo), or ""
};

// Loads the evaluated checkpoint (verified like every checkpoint read) — run_dir's folder of that name, so a
// moved run still finds it, else e.checkpoint as written — and computes both maps for shown_predictions(e)
// in batches, on the CPU. Never throws for the data: a checkpoint that cannot be read, a model whose last
// stage has no cls token, or a build without cairo leave `note` saying so and no maps; an unreadable image
// is left out.
ReportAttention report_attention(const Eval& e, const std::string& run_dir);

}  // namespace tessera::train
