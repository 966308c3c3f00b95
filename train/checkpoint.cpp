#include "train/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "engine/core/fileio.h"

namespace tessera::train {

namespace fs = std::filesystem;
using nlohmann::json;

nlohmann::json state_to_json(const TrainerState& s) {
  return {{"format", "tessera.trainer_state"}, {"version", 2},
          {"epoch", s.epoch}, {"global_step", s.global_step},
          {"rng", {{"seed", s.rng_seed}, {"offset", s.rng_offset}}},
          {"metrics_bytes", s.metrics_bytes},
          {"best_epoch", s.best_epoch}, {"best_val_accuracy", s.best_val_accuracy},
          {"epoch_metrics", s.epoch_metrics}, {"data_fingerprints", s.data_fingerprints}};
}

TrainerState state_from_json(const nlohmann::json& j, const std::string& source) {
  try {
    if (j.at("format") != "tessera.trainer_state")
      throw std::runtime_error("not a tessera trainer state (format)");
    if (j.at("version") != 2)
      throw std::runtime_error("version " + j.at("version").dump() + ", not 2 (written by another tessera version)");
    TrainerState s;
    s.epoch = json_integer(j.at("epoch"), "epoch");
    s.global_step = json_integer(j.at("global_step"), "global_step");
    s.rng_seed = json_unsigned(j.at("rng").at("seed"), "rng.seed");
    s.rng_offset = json_unsigned(j.at("rng").at("offset"), "rng.offset");
    s.metrics_bytes = json_integer(j.at("metrics_bytes"), "metrics_bytes");
    s.best_epoch = json_integer(j.at("best_epoch"), "best_epoch");
    s.best_val_accuracy = j.at("best_val_accuracy").get<double>();
    s.epoch_metrics = j.at("epoch_metrics");
    s.data_fingerprints = j.at("data_fingerprints").get<std::map<std::string, std::string>>();
    if (s.epoch < 1 || s.global_step < 0 || s.metrics_bytes < 0 || s.best_epoch < 0 || s.best_epoch > s.epoch)
      throw std::runtime_error("inconsistent values");
    return s;
  } catch (const std::exception& e) {
    throw std::runtime_error(source + ": bad trainer state: " + e.what());
  }
}

namespace {

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// run_dir/name -> target (relative), replacing any previous link atomically.
void point_link(const fs::path& run_dir, const std::string& name, const std::string& target) {
  const fs::path tmp = run_dir / ("." + name + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_directory_symlink(target, tmp, ec);
  if (ec) throw FileError((run_dir / name).string() + ": cannot create link: " + ec.message());
  fs::rename(tmp, run_dir / name, ec);
  if (ec) throw FileError((run_dir / name).string() + ": cannot replace link: " + ec.message());
}

std::string link_target(const fs::path& link) {
  std::error_code ec;
  if (!fs::is_symlink(link, ec)) return "";
  return fs::read_symlink(link, ec).filename().string();
}

constexpr const char* kChecksumFile = "SHA256SUMS";

// SHA256SUMS in sha256sum's format ("<64 hex digits>  <name>"), one line per file of the folder, sorted.
void write_checksums(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().filename() != kChecksumFile) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  std::string text;
  for (const std::string& n : names) text += sha256_file((dir / n).string()) + "  " + n + "\n";
  write_file_atomic((dir / kChecksumFile).string(), text);
}

bool is_checkpoint_dir(const fs::path& p) {
  std::error_code ec;
  return fs::is_regular_file(p / "model.safetensors", ec) && fs::is_regular_file(p / "config.json", ec);
}

// Every file save_checkpoint writes whatever the options (raw_model.safetensors only with --ema), so a
// folder holding them all is one a resume can continue from.
bool is_complete_checkpoint(const fs::path& p) {
  std::error_code ec;
  for (const char* f : {"config.json", "model.safetensors", "optimizer.safetensors", "preprocessor_config.json",
                        "trainer_state.json", kChecksumFile})
    if (!fs::is_regular_file(p / f, ec)) return false;
  return true;
}

}  // namespace

std::string checkpoint_name(int64_t epoch) {
  char name[64];
  std::snprintf(name, sizeof name, "checkpoint-epoch-%03lld", static_cast<long long>(epoch));
  return name;
}

std::string save_checkpoint(const std::string& run_dir, const models::Model& model, const AdamW& optimizer,
                            const ProcessorConfig& processor, const TrainerState& state, bool is_best,
                            const WeightEma* ema, const std::function<void(std::string_view stage)>& at_stage) {
  const std::string name = checkpoint_name(state.epoch);
  const fs::path root(run_dir), final_dir = root / name;
  const fs::path tmp = root / ("." + name + ".tmp-" + std::to_string(::getpid()));
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    models::save_model(model, tmp.string());  // config.json + model.safetensors, each fsynced
    if (ema) {
      fs::rename(tmp / "model.safetensors", tmp / "raw_model.safetensors", ec);
      if (ec) throw FileError((tmp / "raw_model.safetensors").string() + ": cannot rename: " + ec.message());
      ema->save((tmp / "model.safetensors").string());
    }
    save_optimizer(optimizer, (tmp / "optimizer.safetensors").string());
    if (at_stage) at_stage("files");
    write_file_atomic((tmp / "preprocessor_config.json").string(), processor_to_json(processor).dump(2) + "\n");
    write_file_atomic((tmp / "trainer_state.json").string(), state_to_json(state).dump(2) + "\n");
    write_checksums(tmp);  // last: a folder with a complete SHA256SUMS holds every file it lists
    fs::remove_all(final_dir, ec);  // a stale copy of this epoch from a run killed after writing it
    fs::rename(tmp, final_dir, ec);
    if (ec) throw FileError(final_dir.string() + ": cannot move the checkpoint into place: " + ec.message());
  } catch (...) {
    // A checkpoint that failed half-way is never resumed from: leave no part of it (a full disk keeps
    // its space).
    fs::remove_all(tmp, ec);
    throw;
  }
  fsync_dir(root);
  if (at_stage) at_stage("links");

  point_link(root, "last", name);
  if (is_best) point_link(root, "best", name);
  fsync_dir(root);

  // Keep only what last and best point to (and never a folder that is not ours).
  const std::string last = link_target(root / "last"), best = link_target(root / "best");
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.rfind("checkpoint-epoch-", 0) != 0 || n == last || n == best) continue;
    if (entry.is_symlink()) continue;
    fs::remove_all(entry.path(), ec);
  }
  return final_dir.string();
}

bool verify_checkpoint(const std::string& dir) {
  const fs::path d(dir), sums = d / kChecksumFile;
  std::error_code ec;
  if (!fs::exists(d / "trainer_state.json", ec) && !fs::exists(sums, ec)) return false;  // not written by train
  if (!fs::exists(sums, ec))
    throw std::runtime_error(sums.string() + ": missing, so the checkpoint's files cannot be verified (a "
                             "training checkpoint always has one; this folder was altered or written by an "
                             "older tessera)");
  const std::string text = read_file(sums.string());
  std::istringstream in(text);
  int listed = 0;
  for (std::string line; std::getline(in, line);) {
    // "<64 hex>  <name>" (sha256sum's text mode), name a plain file name in this folder.
    const bool hex = line.size() > 66 && line.compare(64, 2, "  ") == 0 &&
                     line.find_first_not_of("0123456789abcdef") >= 64;
    const std::string name = hex ? line.substr(66) : "";
    if (!hex || name.find('/') != std::string::npos || name == "." || name == "..")
      throw std::runtime_error(sums.string() + ": line " + std::to_string(listed + 1) + " is not \"<sha256>  <file name>\"");
    const fs::path file = d / name;
    if (!fs::is_regular_file(file, ec))
      throw std::runtime_error(file.string() + ": missing (" + kChecksumFile + " lists it)");
    const std::string actual = sha256_file(file.string());
    if (actual != line.substr(0, 64))
      throw std::runtime_error(file.string() + ": damaged: its SHA-256 is " + actual.substr(0, 12) + "…, not the " +
                               line.substr(0, 12) + "… recorded when the checkpoint was written");
    ++listed;
  }
  for (const char* needed : {"config.json", "model.safetensors"})
    if (text.find(std::string("  ") + needed + "\n") == std::string::npos)
      throw std::runtime_error(sums.string() + ": does not list " + needed);
  return true;
}

std::string resolve_checkpoint(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (!fs::exists(p, ec)) throw std::runtime_error(path + ": no such checkpoint or run directory");
  if (is_checkpoint_dir(p)) return verify_checkpoint(p.string()), p.string();
  for (const char* link : {"best", "last"})
    if (is_checkpoint_dir(p / link)) return verify_checkpoint((p / link).string()), (p / link).string();
  throw std::runtime_error(path + ": neither a checkpoint (config.json + model.safetensors) nor a run "
                           "directory with a best or last checkpoint");
}

std::string last_checkpoint(const std::string& run_dir, std::ostream& notes) {
  std::error_code ec;
  if (!fs::is_directory(run_dir, ec))
    throw std::runtime_error(run_dir + ": no checkpoint to resume from: the folder does not exist (--resume names "
                             "a run directory)");
  const fs::path p = fs::path(run_dir) / "last";
  if (is_complete_checkpoint(p)) return verify_checkpoint(p.string()), p.string();
  // The link can be lost (removed by hand, a copy that dropped links) while the checkpoints are intact:
  // continue from the newest complete one. Names are zero-padded, so the greatest name is the newest.
  std::string newest;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.rfind("checkpoint-epoch-", 0) == 0 && n > newest && is_complete_checkpoint(entry.path())) newest = n;
  }
  if (newest.empty())
    throw std::runtime_error(run_dir + ": no checkpoint to resume from (" + p.string() + " is missing and no " +
                             "complete checkpoint-epoch-NNN exists: the run was stopped before its first epoch ended)");
  notes << "note: " << p.string() << " is missing or incomplete; resuming from " << newest
        << ", the newest complete checkpoint\n";
  verify_checkpoint((fs::path(run_dir) / newest).string());
  return (fs::path(run_dir) / newest).string();
}

std::vector<std::string> remove_temporaries(const std::string& run_dir) {
  std::vector<std::string> removed;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(run_dir, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.find(".tmp-") == std::string::npos) continue;
    fs::remove_all(entry.path(), ec);
    if (!ec) removed.push_back(n);
  }
  std::sort(removed.begin(), removed.end());
  return removed;
}

ProcessorConfig checkpoint_processor(const std::string& checkpoint_dir, const models::ModelConfig& config) {
  const fs::path file = fs::path(checkpoint_dir) / "preprocessor_config.json";
  ProcessorConfig p;
  if (fs::exists(file)) p = processor_from_json(read_json(file.string()), file.string());
  else if (const auto* vit = std::get_if<models::VitConfig>(&config)) p = ProcessorConfig::vit(int(vit->image_size));
  else p = ProcessorConfig::cvt(224);
  // The processor file has no channel count (transformers' processors have none): the model's config says.
  p.channels = int(models::num_channels(config));
  return p;
}

TrainerState load_trainer_state(const std::string& checkpoint_dir) {
  const std::string file = (fs::path(checkpoint_dir) / "trainer_state.json").string();
  return state_from_json(read_json(file), file);
}

}  // namespace tessera::train
