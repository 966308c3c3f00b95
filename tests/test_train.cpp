// The training library's parts that the end-to-end test (tests/train_test.sh) does not pin down one by one:
// option and state records, the processor record, checkpoint resolution, evaluation with a head wider than
// the data set, the progress bar's log lines.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "data/dataset.h"
#include "engine/core/fileio.h"
#include "engine/ops.h"
#include "models/model.h"
#include "tests/temp_dir.h"
#include "train/checkpoint.h"
#include "train/evaluate.h"
#include "train/progress.h"
#include "train/synthetic.h"
#include "train/trainer.h"

using namespace tessera;
using namespace tessera::train;
namespace fs = std::filesystem;

TEST_CASE("train options round-trip through JSON and every recipe validates") {
  for (const auto& name : recipe_names()) {
    TrainOptions o = recipe_options(name);
    o.data = "somewhere";
    CHECK_NOTHROW(validate(o));
    TrainOptions back = options_from_json(options_to_json(o), "test");
    CHECK(options_to_json(back) == options_to_json(o));
  }
  CHECK_THROWS_WITH_AS(recipe_options("fast"), doctest::Contains("default, study, cpu"), std::invalid_argument);
  nlohmann::json j = options_to_json(recipe_options("study"));
  j.erase("lr");
  CHECK_THROWS_WITH(options_from_json(j, "run.json"), doctest::Contains("run.json: options lack 'lr'"));
}

TEST_CASE("train option validation names every problem at once") {
  TrainOptions o = recipe_options("default");
  o.epochs = 0, o.lr = -1, o.precision = "fp8", o.val_fraction = 1.5;  // and no data
  try {
    validate(o);
    FAIL("validate accepted bad options");
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    for (const char* part : {"--epochs", "--lr", "--precision", "--val-fraction", "--data"}) CHECK(m.find(part) != std::string::npos);
  }
}

TEST_CASE("trainer state round-trips and a damaged one is refused with the file name") {
  TrainerState s;
  s.epoch = 3, s.global_step = 216, s.rng_seed = 0xFFFFFFFFFFFFFFF1ULL, s.rng_offset = 123456789012345ULL;
  s.metrics_bytes = 4096, s.best_epoch = 2, s.best_val_accuracy = 0.875;
  s.epoch_metrics = {{"event", "epoch"}, {"epoch", 3}};
  s.data_fingerprints = {{"Training", "0a1b"}, {"Testing", "2c3d"}};
  TrainerState back = state_from_json(state_to_json(s), "x");
  CHECK(back.data_fingerprints == s.data_fingerprints);
  CHECK(back.rng_seed == s.rng_seed);  // a full 64-bit seed survives JSON
  CHECK(back.rng_offset == s.rng_offset);
  CHECK(back.global_step == 216);
  CHECK(back.best_val_accuracy == 0.875);
  nlohmann::json bad = state_to_json(s);
  bad["best_epoch"] = 7;  // after the last epoch
  CHECK_THROWS_WITH(state_from_json(bad, "ck/trainer_state.json"), doctest::Contains("ck/trainer_state.json: bad trainer state"));
  nlohmann::json old = state_to_json(s);
  old["version"] = 1;  // before data fingerprints
  CHECK_THROWS_WITH(state_from_json(old, "ck/trainer_state.json"), doctest::Contains("version 1, not 2"));
  // Numbers that are not integers of the field's range: refused by name, never converted (the fuzzer's
  // seed of 4.07e21 was a float cast past uint64's range, undefined behaviour).
  nlohmann::json huge = state_to_json(s);
  huge["rng"]["seed"] = 4.07704e+21;
  CHECK_THROWS_WITH(state_from_json(huge, "ck/trainer_state.json"),
                    doctest::Contains("rng.seed: expected an unsigned integer, got 4.07704e+21"));
  nlohmann::json fraction = state_to_json(s);
  fraction["epoch"] = 2.5;
  CHECK_THROWS_WITH(state_from_json(fraction, "ck/trainer_state.json"), doctest::Contains("epoch: expected an integer"));
  nlohmann::json negative_seed = state_to_json(s);
  negative_seed["rng"]["offset"] = -1;
  CHECK_THROWS_WITH(state_from_json(negative_seed, "ck/trainer_state.json"), doctest::Contains("rng.offset"));
}

TEST_CASE("preprocessor_config.json round-trips both processors and rejects what it cannot run") {
  for (ProcessorConfig c : {ProcessorConfig::cvt(64), ProcessorConfig::vit(224), ProcessorConfig::cvt(384)}) {
    ProcessorConfig back = processor_from_json(processor_to_json(c), "p");
    CHECK(back.mode == c.mode);
    CHECK(back.height == c.height);
    CHECK(back.width == c.width);
    CHECK(back.filter == c.filter);
    CHECK(back.crop_pct == c.crop_pct);
    CHECK(back.mean == c.mean);
    CHECK(back.std == c.std);
  }
  nlohmann::json j = processor_to_json(ProcessorConfig::cvt(64));
  j["image_processor_type"] = "CLIPImageProcessor";
  CHECK_THROWS_WITH(processor_from_json(j, "pp.json"), doctest::Contains("pp.json: image_processor_type 'CLIPImageProcessor'"));
  j = processor_to_json(ProcessorConfig::vit(32));
  j["size"] = {{"height", 32}, {"width", 48}};
  CHECK_THROWS_WITH(processor_from_json(j, "pp.json"), doctest::Contains("square"));
  j["size"] = {{"shortest_edge", 1e30}};  // a float past int's range: named, never converted
  CHECK_THROWS_WITH(processor_from_json(j, "pp.json"), doctest::Contains("pp.json: size.shortest_edge: expected an integer in [1, 4096], got 1e+30"));
  j["size"] = 64;
  j["resample"] = 2.5;
  CHECK_THROWS_WITH(processor_from_json(j, "pp.json"), doctest::Contains("pp.json: resample: expected an integer"));
}

namespace {

// A tiny two-class model and its optimizer, to write checkpoints of.
struct CheckpointFixture {
  std::unique_ptr<models::Model> model = [] {
    models::ModelConfig c = models::preset_config("cvt-tiny");
    models::set_labels(c, {"a", "b"});
    return models::make_model(c, 1);
  }();
  AdamW opt{model->parameters()};
  TrainerState s;
  std::string save(const std::string& dir, int64_t epoch, bool best) {
    s.epoch = epoch;
    if (best) s.best_epoch = epoch;
    return save_checkpoint(dir, *model, opt, ProcessorConfig::cvt(64), s, best);
  }
};

}  // namespace

TEST_CASE("resolve_checkpoint takes a run directory or a checkpoint and names what is missing") {
  testing::TempDir dir("ckpt");
  CHECK_THROWS_WITH(resolve_checkpoint(dir / "nope"), doctest::Contains("no such checkpoint"));
  CHECK_THROWS_WITH(resolve_checkpoint(dir.path.string()), doctest::Contains("neither a checkpoint"));
  CHECK_THROWS_WITH(last_checkpoint(dir.path.string()), doctest::Contains("no checkpoint to resume from"));
  CheckpointFixture f;
  const models::ModelConfig c = f.model->config();
  f.save(dir.path.string(), 1, true);
  const std::string second = f.save(dir.path.string(), 2, false);
  CHECK(fs::read_symlink(dir.path / "best").string() == "checkpoint-epoch-001");
  CHECK(fs::read_symlink(dir.path / "last").string() == "checkpoint-epoch-002");
  CHECK(resolve_checkpoint(dir.path.string()) == (dir.path / "best").string());
  CHECK(resolve_checkpoint(second) == second);
  CHECK(checkpoint_processor(second, c).height == 64);
  CHECK(load_trainer_state(second).epoch == 2);
  f.save(dir.path.string(), 3, false);
  CHECK_FALSE(fs::exists(dir.path / "checkpoint-epoch-002"));  // neither last nor best any more
  CHECK(fs::exists(dir.path / "checkpoint-epoch-001"));
}

TEST_CASE("evaluate counts predictions outside the data set's classes under (other)") {
  testing::TempDir dir("eval");
  make_synthetic_dataset(dir.path.string(), 7);
  SplitLayout data = load_split_layout(dir.path.string());
  models::ModelConfig c = models::preset_config("cvt-tiny");
  models::set_labels(c, models::default_labels(40));  // a head wider than the 4 classes (a kept ImageNet head)
  auto model = models::make_model(c, 3);
  EvalOptions eo;
  eo.workers = 2;
  EvalResult r = evaluate(*model, data.test.samples, data.test.classes, ProcessorConfig::cvt(32), eo);
  REQUIRE(r.classes.size() == 5);
  CHECK(r.classes.back() == "(other)");
  int64_t other = 0, correct = 0;
  for (size_t k = 0; k < r.preds.size(); ++k) other += r.preds[k] == 4, correct += r.preds[k] == r.labels[k];
  CHECK(r.report.per_class[4].support == 0);
  CHECK(r.report.confusion[0][4] + r.report.confusion[1][4] + r.report.confusion[2][4] + r.report.confusion[3][4] == other);
  CHECK(r.report.accuracy == doctest::Approx(double(correct) / double(r.preds.size())));
  CHECK(r.preds.size() == data.test.samples.size());
  for (const auto& p : r.probs) CHECK(p.size() == 4);
}

TEST_CASE("evaluate reports the novel subset from a list of paths relative to the root") {
  testing::TempDir dir("novel");
  make_synthetic_dataset(dir.path.string(), 8);
  SplitLayout data = load_split_layout(dir.path.string());
  models::ModelConfig c = models::preset_config("cvt-tiny");
  models::set_labels(c, data.test.classes);
  auto model = models::make_model(c, 4);
  std::set<std::string> novel{"Testing/disc/disc_000.png", "Testing/ring/ring_003.png"};
  EvalOptions eo;
  eo.novel = &novel;
  eo.root = dir.path.string();
  EvalResult r = evaluate(*model, data.test.samples, data.test.classes, ProcessorConfig::cvt(32), eo);
  REQUIRE(r.novel_total.has_value());
  CHECK(*r.novel_total == 2);
  // Classes are the sorted folder names: checkerboard, disc, ring, stripes.
  CHECK(r.novel_recall_support == std::vector<int64_t>{0, 1, 1, 0});
  nlohmann::json j = eval_to_json(r, "Testing", "ck", "list.txt");
  CHECK(j["novel"]["total"] == 2);
  CHECK(j["predictions"].size() == data.test.samples.size());
  CHECK(j["confusion_matrix"].size() == 4);
}

TEST_CASE("evaluate with test-time mirroring averages the image's and its mirror image's probabilities") {
  testing::TempDir dir("tta");
  make_synthetic_dataset(dir.path.string(), 9);
  SplitLayout data = load_split_layout(dir.path.string());
  std::vector<Sample> samples(data.test.samples.begin(), data.test.samples.begin() + 6);
  models::ModelConfig c = models::preset_config("cvt-tiny");
  models::set_labels(c, data.test.classes);
  auto model = models::make_model(c, 5);
  const ProcessorConfig proc = ProcessorConfig::cvt(32);
  EvalOptions eo;
  eo.tta_hflip = true;
  eo.batch_size = 4;  // two batches, the second partial
  EvalResult r = evaluate(*model, samples, data.test.classes, proc, eo);
  REQUIRE(r.probs.size() == samples.size());
  // The same, image by image: the model on the preprocessed image and on its columns reversed.
  NoGradGuard no_grad;
  Generator unused(0);
  double max_diff = 0;
  for (size_t i = 0; i < samples.size(); ++i) {
    const Tensor x = preprocess(decode_image(samples[i].path), proc);
    const int64_t H = x.size(1), W = x.size(2);
    Tensor m = Tensor::empty(x.shape());
    const float* src = x.data<float>();
    float* dst = m.data<float>();
    for (int64_t ch = 0; ch < 3; ++ch)
      for (int64_t y = 0; y < H; ++y)
        for (int64_t xx = 0; xx < W; ++xx) dst[(ch * H + y) * W + xx] = src[(ch * H + y) * W + (W - 1 - xx)];
    const auto p = softmax(model->forward(x.reshape({1, 3, H, W}), false, unused), -1).to_vector<float>();
    const auto q = softmax(model->forward(m.reshape({1, 3, H, W}), false, unused), -1).to_vector<float>();
    for (size_t k = 0; k < p.size(); ++k) max_diff = std::max(max_diff, std::abs(r.probs[i][k] - 0.5 * (p[k] + q[k])));
  }
  // float32 forward passes of batch 4 against batch 1: the GEMMs' blocking differs, so the logits differ in
  // their last bits (|logit| < 10 here, f32 epsilon 1.2e-7: ~1e-6 after the model's accumulations); the
  // probabilities by no more than that. 1e-5 leaves a margin and still fails for a missing mirror (~1e-2).
  CHECK(max_diff < 1e-5);
}

TEST_CASE("the progress bar writes a line per quarter epoch when not on a terminal") {
  std::ostringstream log;
  ProgressBar bar(log, 2, 5, 10, true);
  for (int64_t s = 1; s <= 10; ++s) bar.update(s, s * 8, 1.5, 1e-3);
  bar.finish();
  const std::string text = log.str();
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);
  CHECK(text.find("epoch 2/5") != std::string::npos);
  CHECK(text.find("10/10") != std::string::npos);
  CHECK(text.find("loss 1.5000") != std::string::npos);
  CHECK(text.find("lr 1.00e-03") != std::string::npos);
  CHECK(format_duration(3725) == "1:02:05");
  CHECK(format_duration(65) == "1:05");
}

TEST_CASE("evaluation finds each class folder by name in the model's labels, and a missing class is reported") {
  testing::TempDir dir("byname");
  make_synthetic_dataset(dir.path.string(), 11);
  // The first class (checkerboard) has no Testing folder: scanned by position, disc would become label 0.
  fs::remove_all(dir.path / "Testing" / "checkerboard");
  models::ModelConfig c = models::preset_config("cvt-tiny");
  models::set_labels(c, {"checkerboard", "disc", "ring", "stripes"});
  models::save_model(*models::make_model(c, 6), dir / "ck");
  auto model = models::load_model(dir / "ck");
  const std::vector<std::string> names = std::get<models::CvtConfig>(model->config()).id2label;
  const DatasetSplit split = scan_by_name(dir / "Testing", names, "the model");
  CHECK(split.missing == std::vector<std::string>{"checkerboard"});
  for (const Sample& s : split.samples)
    CHECK_MESSAGE(names[size_t(s.label)] == fs::path(s.path).parent_path().filename().string(), s.path);
  EvalOptions eo;
  eo.workers = 2;
  const EvalResult r = evaluate(*model, split.samples, names, ProcessorConfig::cvt(32), eo);
  REQUIRE(r.report.per_class.size() == 4);  // keyed by the model's classes, the missing one included
  CHECK(r.report.per_class[0].support == 0);
  CHECK(r.report.per_class[1].support == 15);
  CHECK(format_eval(r, "Testing").find("no images of class checkerboard\n") != std::string::npos);
  // A folder the model has no class for is refused, naming it.
  fs::create_directories(dir.path / "Testing" / "zebra");
  CHECK_THROWS_WITH(scan_by_name(dir / "Testing", names, "the model"), doctest::Contains("zebra"));
}

TEST_CASE("a checkpoint proves its integrity: SHA256SUMS, checked before any file is trusted") {
  testing::TempDir dir("sums");
  CheckpointFixture f;
  const fs::path ck = f.save(dir.path.string(), 1, true);
  CHECK(verify_checkpoint(ck.string()));
  const std::string sums = read_file((ck / "SHA256SUMS").string());
  for (const char* name : {"config.json", "model.safetensors", "optimizer.safetensors", "preprocessor_config.json",
                           "trainer_state.json"})
    CHECK(sums.find("  " + std::string(name) + "\n") != std::string::npos);
  CHECK(sums.find(sha256_file((ck / "model.safetensors").string()) + "  model.safetensors\n") != std::string::npos);
  // One flipped byte anywhere in a weight file: every reader refuses it, naming the file.
  const std::string model = read_file((ck / "model.safetensors").string());
  std::string flipped = model;
  flipped[flipped.size() - 3] ^= 0x10;  // in the last tensor's data: still a valid safetensors file
  write_file_atomic((ck / "model.safetensors").string(), flipped);
  CHECK_THROWS_WITH(resolve_checkpoint(dir.path.string()), doctest::Contains("model.safetensors: damaged"));
  CHECK_THROWS_WITH(last_checkpoint(dir.path.string()), doctest::Contains("model.safetensors: damaged"));
  write_file_atomic((ck / "model.safetensors").string(), model);
  CHECK(verify_checkpoint(ck.string()));
  // A removed file, a removed or garbled SHA256SUMS.
  const std::string state = read_file((ck / "trainer_state.json").string());
  fs::remove(ck / "trainer_state.json");
  CHECK_THROWS_WITH(verify_checkpoint(ck.string()), doctest::Contains("trainer_state.json: missing"));
  write_file_atomic((ck / "trainer_state.json").string(), state);
  fs::remove(ck / "SHA256SUMS");
  CHECK_THROWS_WITH(verify_checkpoint(ck.string()), doctest::Contains("SHA256SUMS: missing"));
  write_file_atomic((ck / "SHA256SUMS").string(), "not a sum  config.json\n");
  CHECK_THROWS_WITH(verify_checkpoint(ck.string()), doctest::Contains("line 1 is not"));
  write_file_atomic((ck / "SHA256SUMS").string(), std::string(64, 'a') + "  ../../etc/passwd\n");
  CHECK_THROWS_WITH(verify_checkpoint(ck.string()), doctest::Contains("line 1 is not"));
  // A model folder from elsewhere (config.json + model.safetensors only) has nothing to verify.
  fs::create_directories(dir.path / "hf");
  fs::copy_file(ck / "config.json", dir.path / "hf" / "config.json");
  fs::copy_file(ck / "model.safetensors", dir.path / "hf" / "model.safetensors");
  CHECK_FALSE(verify_checkpoint((dir.path / "hf").string()));
  CHECK(resolve_checkpoint((dir.path / "hf").string()) == (dir.path / "hf").string());
}

TEST_CASE("the novel list names the data it was made for") {
  const std::string text = novel_list_text("ab12", {"Testing/x/1.jpg", "Testing/y/2.jpg"});
  testing::TempDir dir("novel");
  write_file_atomic(dir / "novel.txt", text);
  const auto list = load_novel_list(dir / "novel.txt");
  REQUIRE(list);
  CHECK(list->fingerprint == "ab12");
  CHECK(list->paths == std::set<std::string>{"Testing/x/1.jpg", "Testing/y/2.jpg"});
  write_file_atomic(dir / "old.txt", "Testing/x/1.jpg\n");  // an older tessera's list: no fingerprint
  CHECK(load_novel_list(dir / "old.txt")->fingerprint.empty());
  CHECK_FALSE(load_novel_list(dir / "gone.txt"));
}

TEST_CASE("resume: a missing folder, a lost last link, and a run with no complete checkpoint") {
  testing::TempDir dir("resume");
  CHECK_THROWS_WITH(last_checkpoint(dir / "gone"), doctest::Contains("the folder does not exist"));
  CheckpointFixture f;
  f.save(dir.path.string(), 1, true);
  f.save(dir.path.string(), 2, false);
  std::ostringstream notes;
  CHECK(last_checkpoint(dir.path.string(), notes) == (dir.path / "last").string());
  CHECK(notes.str().empty());
  // The link is gone: the newest complete checkpoint, said so.
  fs::remove(dir.path / "last");
  CHECK(last_checkpoint(dir.path.string(), notes) == (dir.path / "checkpoint-epoch-002").string());
  CHECK(notes.str().find("resuming from checkpoint-epoch-002") != std::string::npos);
  // An incomplete one is passed over.
  fs::remove(dir.path / "checkpoint-epoch-002" / "optimizer.safetensors");
  CHECK(last_checkpoint(dir.path.string(), notes) == (dir.path / "checkpoint-epoch-001").string());
  fs::remove(dir.path / "checkpoint-epoch-001" / "trainer_state.json");
  CHECK_THROWS_WITH(last_checkpoint(dir.path.string(), notes), doctest::Contains("stopped before its first epoch ended"));
}

TEST_CASE("a checkpoint write that fails leaves no temporary folder, and a killed run's leftovers are removed") {
  testing::TempDir dir("tmpckpt");
  CheckpointFixture f;
  // The injected failure: trainer_state.json, the last file written, cannot be serialised (invalid UTF-8),
  // after the weights, the moments and the processor are already in the temporary folder.
  f.s.epoch_metrics = {{"note", "\xff"}};
  CHECK_THROWS(f.save(dir.path.string(), 1, true));
  CHECK(fs::is_empty(dir.path));  // no .checkpoint-epoch-001.tmp-PID, no checkpoint, no link
  // What a killed run leaves: a temporary checkpoint folder, a link's and a file's temporaries.
  fs::create_directories(dir.path / ".checkpoint-epoch-004.tmp-123" / "x");
  fs::create_directory_symlink("checkpoint-epoch-004", dir.path / ".last.tmp-123");
  write_file_atomic(dir / "run.json.tmp-123-0000abcd", "{");
  write_file_atomic(dir / "run.json", "{}");
  CHECK(remove_temporaries(dir.path.string()) ==
        std::vector<std::string>{".checkpoint-epoch-004.tmp-123", ".last.tmp-123", "run.json.tmp-123-0000abcd"});
  CHECK(fs::exists(dir.path / "run.json"));
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}
