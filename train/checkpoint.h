// Training checkpoints on disk (the layout is described in train/trainer.h).
#pragma once
#include <cstdint>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/preprocess.h"
#include "engine/ema.h"
#include "engine/optim.h"
#include "models/model.h"

namespace tessera::train {

// Where a run stands after an epoch: everything besides the weights and the optimizer moments that a
// resumed run needs to continue exactly.
struct TrainerState {
  int64_t epoch = 0;        // epochs completed (1-based count)
  int64_t global_step = 0;  // optimizer steps taken
  uint64_t rng_seed = 0, rng_offset = 0;  // the dropout / drop-path stream
  int64_t metrics_bytes = 0;              // metrics.jsonl's length right after this epoch's line
  int64_t best_epoch = 0;                 // best so far (0: none yet)
  double best_val_accuracy = -1;
  nlohmann::json epoch_metrics;           // this epoch's "epoch" line of metrics.jsonl
  // The data the run was given, as fingerprints (data/dataset.h) by split folder name ("Training",
  // "Testing"; "" for a flat folder): a resume refuses changed data unless told (--allow-data-change).
  std::map<std::string, std::string> data_fingerprints;
};

nlohmann::json state_to_json(const TrainerState& s);
TrainerState state_from_json(const nlohmann::json& j, const std::string& source);

// Writes run_dir/checkpoint-epoch-NNN (config.json, model.safetensors, optimizer.safetensors,
// trainer_state.json, preprocessor_config.json, and last SHA256SUMS: every other file's SHA-256) through a temporary folder renamed into place, points run_dir/last (and run_dir/best
// when is_best) at it, then deletes checkpoints that are neither. Returns the checkpoint's path.
// preprocessor_config.json (the evaluation processor: resolution and normalisation) is written too.
// With `ema` (--ema), model.safetensors holds the weights' moving average (WeightEma::save: its update
// count and decay in the metadata), the model the run selects and every reader of the checkpoint gets,
// and raw_model.safetensors the weights being trained, which a resumed run continues from.
// `at_stage` (fault injection for tests; may not return) is called with "files" once the weights and
// moments are in the temporary folder, and with "links" once the folder is in place, before the links move.
std::string save_checkpoint(const std::string& run_dir, const models::Model& model, const AdamW& optimizer,
                            const ProcessorConfig& processor, const TrainerState& state, bool is_best,
                            const WeightEma* ema = nullptr,
                            const std::function<void(std::string_view stage)>& at_stage = {});

// The folder of the checkpoint after `epoch`: "checkpoint-epoch-NNN" (zero-padded, so names sort by epoch).
std::string checkpoint_name(int64_t epoch);

// Checks a checkpoint folder against its SHA256SUMS before anything in it is trusted: every listed file
// present with the recorded SHA-256, config.json and model.safetensors among them. A folder without
// trainer_state.json and SHA256SUMS is a model from elsewhere (a Hugging Face download): nothing to verify,
// returns false. A training checkpoint without SHA256SUMS, a missing or damaged file: throws one line naming
// the file. Returns true when verified. resolve_checkpoint and last_checkpoint call it on what they return.
bool verify_checkpoint(const std::string& dir);

// The processor a checkpoint folder's images need: its preprocessor_config.json, else the model's standard
// one (CvT: ConvNext at 224; ViT: its config's image_size).
ProcessorConfig checkpoint_processor(const std::string& checkpoint_dir, const models::ModelConfig& config);

// A checkpoint folder from what a user passes: a run directory (its best checkpoint, else its last) or a
// checkpoint directory itself (one holding model.safetensors), verified (verify_checkpoint). Throws naming
// the path when it is neither.
std::string resolve_checkpoint(const std::string& path);
// The checkpoint --resume continues from: run_dir/last, or when that link is gone (or its folder
// incomplete), the newest complete checkpoint-epoch-NNN (every file save_checkpoint writes present), with a
// note on `notes` saying so. Throws naming run_dir when it does not exist, or when it holds no complete
// checkpoint (the run stopped before its first epoch ended), or when the one found fails verify_checkpoint.
std::string last_checkpoint(const std::string& run_dir, std::ostream& notes = std::cerr);

// Removes what a killed process left half-written in run_dir: save_checkpoint's temporary folders and
// links, and write_file_atomic's temporary files (every name holding ".tmp-"). Only for a run directory
// whose lock is held, so that no live writer owns them. Returns the names removed.
std::vector<std::string> remove_temporaries(const std::string& run_dir);

TrainerState load_trainer_state(const std::string& checkpoint_dir);

}  // namespace tessera::train
