// The option table of `tessera train` (train/options.h) and what is derived from it, the typed choices,
// read_json, the model config's field lists and the one statement of the GPU status.
#include <doctest/doctest.h>

#include <filesystem>
#include <limits>
#include <set>
#include <sstream>

#include "engine/core/cuda.h"
#include "engine/core/fileio.h"
#include "models/config.h"
#include "tests/temp_dir.h"
#include "train/trainer.h"

using namespace tessera;
using namespace tessera::train;

TEST_CASE("the option table has one row per run.json key and per flag, and every stored row round-trips") {
  std::set<std::string> names, flags;
  int rows = 0;
  for_each_option([&](const auto& row) {
    ++rows;
    CHECK_MESSAGE(names.insert(row.name).second, row.name);
    if (*row.flags) CHECK_MESSAGE(flags.insert(row.label()).second, row.label());
  });
  CHECK(rows == int(names.size()));
  CHECK(flags.count("--recipe"));
  CHECK(flags.count("--no-progress"));  // CLI11's "!" (the flag sets false) is not part of the name
  // run.json holds exactly the stored rows.
  const nlohmann::json j = options_to_json(recipe_options("cpu"));
  int stored = 0;
  for_each_option([&](const auto& row) {
    stored += row.in_run_json;
    CHECK_MESSAGE(j.contains(row.name) == row.in_run_json, row.name);
  });
  CHECK(int(j.size()) == stored);
}

TEST_CASE("choices are parsed once, and a bad one is kept for validate to name beside the others") {
  TrainOptions o = recipe_options("cpu");
  o.data = "somewhere";
  CHECK(*o.device == DeviceChoice::CPU);
  CHECK(*o.schedule == LrSchedule::Kind::Cosine);
  CHECK(*o.precision == Precision::FP32);
  CHECK(*o.warmup == Warmup{Warmup::Unit::Epochs, 1});
  o.warmup = "3weeks";
  o.device = "tpu";
  o.schedule = "steep";
  CHECK_FALSE(o.warmup.ok());
  CHECK(o.warmup.text() == "3weeks");  // what run.json would record
  CHECK_THROWS_AS(*o.device, std::invalid_argument);
  try {
    validate(o);
    FAIL("validate accepted bad choices");
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    CHECK(m.find("--warmup '3weeks': give steps (500)") != std::string::npos);
    CHECK(m.find("--device must be cuda or cpu, not 'tpu'") != std::string::npos);
    CHECK(m.find("--schedule must be constant, linear or cosine, not 'steep'") != std::string::npos);
  }
  CHECK_THROWS_WITH(parse_device("tpu"), doctest::Contains("--device must be cuda or cpu, not 'tpu'"));
  CHECK(parse_device("") == DeviceChoice::Auto);
}

TEST_CASE("warmup in steps, a fraction of all steps, or epochs") {
  auto steps = [](const char* text, int64_t per_epoch, int64_t total) {
    Parsed<Warmup> w = text;
    REQUIRE_MESSAGE(w.ok(), w.error());
    return (*w).steps(per_epoch, total);
  };
  CHECK(steps("0", 10, 100) == 0);
  CHECK(steps("500", 10, 100) == 100);  // capped at all steps
  CHECK(steps("0.05", 10, 100) == 5);
  CHECK(steps("0.051", 10, 100) == 6);  // rounded up, as HF's warmup_ratio
  CHECK(steps("2ep", 10, 100) == 20);
  CHECK(steps("1.5ep", 7, 70) == 11);  // llround(10.5)
  for (const char* bad : {"", "-1", "1.5", "ep", "2 ep", "3weeks", "0.1x"}) CHECK_FALSE_MESSAGE(Parsed<Warmup>(bad).ok(), bad);
}

TEST_CASE("a resumed run keeps its options except where and how it runs, which the invocation decides") {
  TrainOptions stored = recipe_options("cpu");
  stored.data = "d", stored.out = "runs/old-place", stored.workers = 3;
  TrainOptions call = recipe_options("default");  // what a bare `--resume DIR` parses to
  call.resume = "runs/moved";
  call.lr = 0.5;  // not one --resume may change (the command line refuses it; here it is ignored)
  TrainOptions r = resume_options(stored, call);
  CHECK(r.lr == stored.lr);
  CHECK(r.recipe == "cpu");
  CHECK(r.device == call.device);  // not given: this invocation's default, not the stored run's
  CHECK(r.workers == call.workers);
  CHECK(r.out == "runs/moved");
  CHECK(r.resume == "runs/moved");
  call.device = "cuda", call.workers = 1, call.progress = false, call.halt_after_steps = 9;
  r = resume_options(stored, call);
  CHECK(*r.device == DeviceChoice::CUDA);
  CHECK(r.workers == 1);
  CHECK_FALSE(r.progress);
  CHECK(r.halt_after_steps == 9);
}

TEST_CASE("read_json and read_file name the file in their errors") {
  testing::TempDir dir("readjson");
  write_file_atomic(dir / "ok.json", "{\"a\": [1, 2]}");
  write_file_atomic(dir / "bad.json", "{\"a\": [1,");
  CHECK(read_json(dir / "ok.json")["a"][1] == 2);
  const std::string bad = dir / "bad.json" + ": not valid JSON", none = dir / "none.json" + ": cannot open";
  CHECK_THROWS_WITH_AS(read_json(dir / "bad.json"), doctest::Contains(bad.c_str()), FileError);
  CHECK_THROWS_WITH_AS(read_json(dir / "none.json"), doctest::Contains(none.c_str()), FileError);
  CHECK_THROWS_WITH_AS(models::load_config(dir / "bad.json"), doctest::Contains("bad.json: not valid JSON"),
                       models::ConfigError);
}

TEST_CASE("each model config field is written and read back from the same list") {
  for (const char* preset : {"cvt-tiny", "cvt-w24", "vit-s16"}) {
    models::ModelConfig c = models::preset_config(preset);
    const nlohmann::json j = models::config_to_json(c);
    CHECK_MESSAGE(models::config_to_json(models::parse_config(j, "x")) == j, preset);
  }
  // A per-stage list of the wrong length is refused by the same list that writes it.
  nlohmann::json j = models::config_to_json(models::preset_config("cvt-13"));
  j["stride_q"] = {1, 1};
  CHECK_THROWS_WITH(models::parse_config(j, "s.json"), doctest::Contains("'stride_q' must have 3 entries"));
}

TEST_CASE("the GPU model path is stated once: not verified, and every message says so") {
  CHECK_FALSE(kModelsOnCuda);  // no CUDA code of this project has run on a GPU yet
  const std::string caveat = models_on_cuda_caveat();
  CHECK(caveat.find("not been verified on a GPU") != std::string::npos);
  std::ostringstream log;
  if (!cuda::available()) {
    CHECK(resolve_device(DeviceChoice::Auto, log) == Device::CPU);
    CHECK_THROWS_WITH(resolve_device(DeviceChoice::CUDA, log), doctest::Contains("--device cuda"));
  } else {
    CHECK(resolve_device(DeviceChoice::Auto, log) == Device::CPU);
    CHECK(log.str().find(caveat) != std::string::npos);
  }
}

TEST_CASE("options are refused at the edge, each naming its option: drop path, seed, warmup") {
  TrainOptions o = recipe_options("cpu");
  o.data = "somewhere";
  CHECK_FALSE((*recipe_options("study").drop_path).rate.has_value());  // "": the model config's own rate
  CHECK(*(*o.drop_path).rate == 0.0);
  auto problem = [](TrainOptions x) -> std::string {
    try {
      validate(x);
      return "";
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
  };
  // A negative rate was read as "keep the config's" without a word; 1 and more drop everything.
  for (const char* bad : {"-0.1", "-1", "1", "1.5", "nan", "0.1x"}) {
    TrainOptions x = o;
    x.drop_path = bad;
    CHECK_MESSAGE(problem(x).find("--drop-path must be a rate in [0, 1)") != std::string::npos, bad);
  }
  // A negative seed is refused rather than wrapped to 2^64-1.
  o.seed = -1;
  CHECK(problem(o).find("--seed must be >= 0") != std::string::npos);
  o.seed = 42;
  // Warmup: a non-finite length is no warmup; one longer than the run (in any unit) names --warmup.
  CHECK_FALSE(Parsed<Warmup>("infep").ok());
  o.warmup = "1e30ep";
  REQUIRE(o.warmup.ok());
  const std::string run_steps = std::to_string(o.epochs * 4);  // 4 steps an epoch, the recipe's epochs
  CHECK_THROWS_WITH_AS(validate_schedule(o, 4, 64),
                       doctest::Contains(("--warmup '1e30ep' is 4e+30 steps, longer than the run's " + run_steps).c_str()),
                       std::invalid_argument);
  o.warmup = "500";
  CHECK_THROWS_WITH(validate_schedule(o, 4, 64), doctest::Contains("--warmup '500'"));
  o.warmup = "120";
  CHECK_NOTHROW(validate_schedule(o, 4, 64));  // the whole run, exactly
  o.warmup = "1.0";
  CHECK_NOTHROW(validate_schedule(o, 4, 64));
  // No step per epoch (one image, which batch norm cannot train on), and a step count past int64.
  o.max_train_samples = 1;
  CHECK_THROWS_WITH(validate_schedule(o, 0, 1), doctest::Contains("(--max-train-samples 1)"));
  o.max_train_samples = 0, o.epochs = std::numeric_limits<int64_t>::max() / 2;
  CHECK_THROWS_WITH(validate_schedule(o, 4, 64), doctest::Contains("--epochs"));
}

TEST_CASE("run.json's integer options must be integers: a fraction is refused, not truncated") {
  nlohmann::json j = options_to_json(recipe_options("cpu"));
  j["seed"] = 1.5;
  CHECK_THROWS_WITH(options_from_json(j, "r/run.json"), doctest::Contains("r/run.json: option 'seed' must be an integer"));
  j["seed"] = -1;
  TrainOptions o = options_from_json(j, "r/run.json");  // read as it is, then refused by validate
  o.data = "d";
  CHECK_THROWS_WITH(validate(o), doctest::Contains("--seed must be >= 0"));
}
