// The training report on a synthetic run folder: run.json, a metrics.jsonl with a resumed (repeated) epoch,
// and an eval_Testing.json over small PNGs (one unreadable). Checks the page is self-contained and shows the
// right numbers, the confusion-matrix PNG, and the errors for missing and malformed files.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include <doctest/doctest.h>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/image.h"
#include "engine/core/fileio.h"
#include "train/metrics.h"
#include "tests/temp_dir.h"
#include "train/report.h"
#include "train/report_figures.h"
#include "train/report_figures.h"

using namespace tessera;
using json = nlohmann::json;
using tessera::testing::TempDir;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kClasses = {"glioma_tumor", "meningioma_tumor", "no_tumor"};

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

std::string base64(const std::string& in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    if (i + 2 < in.size()) v |= uint8_t(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? t[v & 63] : '=';
  }
  return out;
}

std::string metrics_line(json j) { return j.dump() + "\n"; }
std::string step(int epoch, int g, double loss) {
  return metrics_line({{"event", "step"}, {"epoch", epoch}, {"step", g}, {"global_step", g}, {"loss", loss},
                       {"lr", 1e-5 * g}, {"grad_norm", 1.5}, {"images_per_s", 20.0}, {"elapsed_s", 3.0 * g}});
}
std::string epoch(int e, int g, double val_accuracy, bool best) {
  return metrics_line({{"event", "epoch"}, {"epoch", e}, {"global_step", g}, {"lr", 1e-5}, {"train_loss", 1.0 / e},
                       {"train_accuracy", 0.5}, {"val_loss", 1.1 / e}, {"val_accuracy", val_accuracy},
                       {"val_f1_weighted", val_accuracy - 0.01}, {"val_f1_macro", val_accuracy - 0.02},
                       {"val_recall_weighted", val_accuracy}, {"epoch_s", 9.0}, {"best", best}});
}

// The run: 3 epochs of 2 steps; epoch 2 was logged, then the run was resumed from epoch 1 and epoch 2 logged
// again with val_accuracy 0.7777 (the earlier 0.6111 must not show). Six Testing predictions, 4 correct,
// one of whose images does not exist.
void make_run(const TempDir& dir) {
  json run = {{"tessera_version", "0.1.0"}, {"command", "tessera train --out <runs>&co"},
              {"started", "2026-11-26T10:00:00Z"}, {"model", "cvt-13"}, {"device", "cpu"}, {"precision", "fp32"},
              {"image_size", 224}, {"classes", kClasses},
              {"data", {{"root", dir / "data"}, {"synthetic", true},
                        {"counts", {{"train", {30, 20, 10}}, {"validation", {3, 2, 1}}, {"Testing", {2, 2, 2}}}}}},
              {"options", {{"epochs", 3}, {"batch_size", 8}, {"lr", 2e-5}}}};
  write_text(dir / "run.json", run.dump(2));
  write_text(dir / "metrics.jsonl", step(1, 1, 1.2) + step(1, 2, 1.0) + epoch(1, 2, 0.5, true) + step(2, 3, 0.9) +
                                        step(2, 4, 0.8) + epoch(2, 4, 0.6111, true) + step(2, 3, 0.85) +
                                        step(2, 4, 0.75) + epoch(2, 4, 0.7777, true) + step(3, 5, 0.7) +
                                        step(3, 6, 0.6) + epoch(3, 6, 0.7, false));

  const std::vector<int64_t> labels = {0, 0, 1, 1, 2, 2}, preds = {0, 1, 1, 1, 2, 0};
  json predictions = json::array();
  for (size_t i = 0; i < labels.size(); ++i) {
    fs::create_directories(dir.path / "Testing" / kClasses[size_t(labels[i])]);
    std::string path = dir / ("Testing/" + kClasses[size_t(labels[i])] + "/img" + std::to_string(i) + ".png");
    if (i != 3) {  // image 3 is never written: the report must skip it with a note
      Image im(40 + int(i), 30);
      for (size_t j = 0; j < im.rgb.size(); ++j) im.rgb[j] = uint8_t((j * 13 + i * 50) % 256);
      REQUIRE(stbi_write_png(path.c_str(), im.width, im.height, 3, im.rgb.data(), im.width * 3) != 0);
    }
    json probs = {0.1, 0.1, 0.1};
    probs[size_t(preds[i])] = 0.8;
    predictions.push_back({{"path", path}, {"label", labels[i]}, {"pred", preds[i]}, {"probs", probs}, {"novel", i % 2 == 0}});
  }
  ClassificationReport r = classification_report(labels, preds, kClasses);
  auto metrics = [](const ClassMetrics& m) {
    return json{{"precision", m.precision}, {"recall", m.recall}, {"f1", m.f1}, {"support", m.support}};
  };
  json per_class = json::array();
  for (size_t c = 0; c < kClasses.size(); ++c) {
    json m = metrics(r.per_class[c]);
    m["class"] = kClasses[c];
    per_class.push_back(m);
  }
  json eval = {{"split", "Testing"}, {"checkpoint", dir / "best"}, {"classes", kClasses}, {"accuracy", r.accuracy},
               {"total", r.total}, {"per_class", per_class}, {"macro_avg", metrics(r.macro)},
               {"weighted_avg", metrics(r.weighted)}, {"confusion_matrix", r.confusion},
               {"novel", {{"accuracy", 0.5}, {"total", 2}, {"correct", 1}, {"per_class_recall", {1.0, 1.0, 0.0}}, {"list", "novel.txt"}}},
               {"predictions", predictions}};
  write_text(dir / "eval_Testing.json", eval.dump());
}

}  // namespace

TEST_CASE("report: a self-contained page with the run's numbers, charts, matrix and thumbnails") {
  TempDir dir("report");
  make_run(dir);
  train::write_report(dir.path.string());
  REQUIRE(fs::exists(dir / "report.html"));
  const std::string html = read_file(dir / "report.html");

  // Offline: nothing to fetch.
  CHECK(html.find("http://") == std::string::npos);
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("src=\"/") == std::string::npos);
  CHECK(html.find("src='/") == std::string::npos);
  CHECK(html.find("<script") == std::string::npos);

  for (const auto& c : kClasses) CHECK(html.find(c) != std::string::npos);
  CHECK(html.find("SYNTHETIC DATA") != std::string::npos);
  CHECK(html.find("0.6667") != std::string::npos);   // Testing accuracy, 4 of 6
  CHECK(html.find("0.5000 (50.0%)") != std::string::npos);  // the novel subset
  CHECK(html.find("0.7777") != std::string::npos);   // the resumed epoch 2's line wins...
  CHECK(html.find("0.6111") == std::string::npos);   // ...over the first one
  CHECK(html.find("best: epoch 2") != std::string::npos);
  // Charts: loss, validation metrics, learning rate, gradient norm; one class-count chart per split.
  CHECK(count(html, "<svg") == 7);
  // Strings are escaped.
  CHECK(html.find("--out &lt;runs&gt;&amp;co") != std::string::npos);
  CHECK(html.find("<runs>") == std::string::npos);

  // The confusion-matrix PNG: the next test case.

  // Thumbnails: the 5 readable images, the 2 wrong ones marked; the missing one skipped with a note.
  CHECK(count(html, "data:image/jpeg;base64,") == 5);
  CHECK(count(html, "<figure class='wrong'") == 2);
  CHECK(html.find("could not be read") != std::string::npos);
  CHECK(html.find("img3.png") != std::string::npos);
  // No checkpoint in this run folder: the attention section says why it has no maps.
  CHECK(html.find("No attention maps: the checkpoint could not be read") != std::string::npos);
}

TEST_CASE("report: where the model looked — rollout and relevance over the shown Testing images") {
  TempDir dir("report-attention");
  make_run(dir);
  // The evaluated checkpoint: the tiny CvT fixture (a Hugging Face folder: nothing to verify, loads as is).
  fs::copy(fs::path(TESSERA_SOURCE_DIR) / "tests/fixtures/models/tiny-cvt", dir / "best", fs::copy_options::recursive);
  train::write_report(dir.path.string());
  const std::string html = read_file(dir / "report.html");
  CHECK(html.find("Where the model looked") != std::string::npos);
  if (!train::figures_unavailable().empty()) {
    CHECK(html.find("No attention maps: ") != std::string::npos);
    return;
  }
  CHECK(html.find("Relevance (Chefer et al. 2021)") != std::string::npos);
  // The 5 readable images, each with its rollout and relevance map as PNGs, after the 5 JPEG thumbnails.
  CHECK(count(html, "<img class='attn'") == 10);
  CHECK(count(html, "<figure class='wrong'") == 2);  // 2 wrong thumbnails
  CHECK(count(html, "<figure class='maps wrong'") == 2);  // and their 2 map pairs, as wide as the pair
  CHECK(html.find("No attention maps") == std::string::npos);
}

TEST_CASE("report: confusion_matrix.png is a PNG of the matrix, inlined in the page") {
  TempDir dir("report-png");
  make_run(dir);
  train::write_report(dir.path.string());
  const std::string html = read_file(dir / "report.html");
  if (!train::figures_unavailable().empty()) {  // a build configured without cairo: no PNG, and the page says why
    CHECK(!fs::exists(dir / "confusion_matrix.png"));
    CHECK(html.find("No confusion_matrix.png: " + std::string(train::figures_unavailable())) != std::string::npos);
    CHECK(html.find("data:image/png") == std::string::npos);
    MESSAGE("confusion_matrix.png not drawn: " << train::figures_unavailable());
    return;
  }

  // As a file and inlined byte for byte; a PNG by its signature, 684 x 520 in its header and decoded.
  const std::string png = read_file(dir / "confusion_matrix.png");
  CHECK(html.find("data:image/png;base64," + base64(png) + "'") != std::string::npos);
  REQUIRE(png.size() > 24);
  CHECK(png.substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
  CHECK(png.substr(12, 4) == "IHDR");
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = v << 8 | uint8_t(png[at + i]);
    return v;
  };
  CHECK(be32(16) == 684);
  CHECK(be32(20) == 520);
  Image cm = decode_image(dir / "confusion_matrix.png");
  CHECK(cm.width == 684);
  CHECK(cm.height == 520);

  // Shaded by row share (the all-correct row's diagonal cell is the darkest blue, its empty cells the
  // lightest, a half-right row's diagonal the middle stop).
  auto at = [&](int x, int y) {
    const uint8_t* p = cm.pixel(x, y);
    return std::vector<int>{p[0], p[1], p[2]};
  };
  const std::vector<int> white{255, 255, 255}, darkest{8, 48, 107}, lightest{247, 251, 255}, middle{107, 174, 214};
  CHECK(at(0, 0) == white);
  // Grid from (170, 64), 490 x 360 px, a 1 px rule between cells: rows span y 64..183, 184..303, 304..423;
  // columns x 170..332, 333..495, 496..659. Row 1 (meningioma) is 2 of 2 right, row 0 (glioma) 1 of 2.
  CHECK(at(336, 187) == darkest);
  CHECK(at(173, 187) == lightest);
  CHECK(at(173, 67) == middle);

  // Pixels in [x0, x1) x [y0, y1) for which `is` holds.
  auto pixels = [&](int x0, int y0, int x1, int y1, auto is) {
    int k = 0;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x) k += is(at(x, y));
    return k;
  };
  auto equal = [](const std::vector<int>& c) { return [c](const std::vector<int>& p) { return p == c; }; };
  auto ink = [](const std::vector<int>& p) { return p[0] < 70 && p[1] < 70 && p[2] < 70; };  // dark grey text
  auto light = [](const std::vector<int>& p) { return p[0] > 200 && p[1] > 200 && p[2] > 200; };
  // Each cell is its shade but for its text, and the text is there: dark on light cells, white on dark ones.
  const int cell = 162 * 119;
  CHECK(pixels(333, 184, 495, 303, equal(darkest)) > cell * 9 / 10);
  CHECK(pixels(333, 184, 495, 303, light) > 40);  // "2" and "100.0%" in white
  CHECK(pixels(170, 64, 332, 183, equal(middle)) > cell * 9 / 10);
  CHECK(pixels(170, 64, 332, 183, ink) > 40);  // "1" and "50.0%"
  CHECK(pixels(496, 64, 659, 183, ink) > 40);  // "0" and "0.0%" on the lightest shade
  // Class names left of the rows and under the columns, the axis titles, and the title above the grid.
  for (int i = 0; i < 3; ++i) CHECK(pixels(0, 64 + 120 * i, 162, 64 + 120 * (i + 1), ink) > 40);
  for (int j = 0; j < 3; ++j) CHECK(pixels(170 + 163 * j, 426, 170 + 163 * (j + 1), 490, ink) > 40);
  CHECK(pixels(170, 492, 660, 520, ink) > 40);  // "predicted"
  CHECK(pixels(0, 0, 684, 34, ink) > 100);      // the title
  // The colour scale in the caption line: the palette from its lightest to its darkest stop.
  CHECK(pixels(0, 40, 684, 56, equal(darkest)) > 0);
  CHECK(pixels(0, 40, 684, 56, equal(middle)) > 0);
  CHECK(pixels(0, 40, 684, 56, equal(lightest)) > 0);
}

TEST_CASE("report: missing metrics and evaluation leave their sections saying so") {
  TempDir dir("report-partial");
  make_run(dir);
  fs::remove(dir / "eval_Testing.json");
  fs::remove(dir / "metrics.jsonl");
  train::write_report(dir.path.string());
  const std::string html = read_file(dir / "report.html");
  CHECK(html.find("No evaluation yet") != std::string::npos);
  CHECK(html.find("No metrics.jsonl yet") != std::string::npos);
  CHECK(!fs::exists(dir / "confusion_matrix.png"));
  CHECK(count(html, "<svg") == 3);  // the class counts come from run.json alone

  // A run still being written may end in half a line: it is left out, not an error.
  write_text(dir / "metrics.jsonl", step(1, 1, 1.2) + epoch(1, 1, 0.4242, true) + "{\"event\": \"st");
  train::write_report(dir.path.string());
  CHECK(read_file(dir / "report.html").find("0.4242") != std::string::npos);
}

TEST_CASE("report: a missing run.json and malformed files are errors naming the file") {
  TempDir dir("report-bad");
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("run.json"));

  make_run(dir);
  write_text(dir / "run.json", "{\"model\": ");
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("run.json: not valid JSON"));

  make_run(dir);
  write_text(dir / "metrics.jsonl", step(1, 1, 1.0) + step(1, 2, 0.9) + "{not json}\n" + step(1, 3, 0.8));
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("metrics.jsonl line 3: not valid JSON"));
  write_text(dir / "metrics.jsonl", step(1, 1, 1.0) + "{\"event\": \"epoch\", \"epoch\": \"one\"}\n");
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("metrics.jsonl line 2: \"epoch\""));

  make_run(dir);
  write_text(dir / "eval_Testing.json", "{\"split\": \"Testing\"}");
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("eval_Testing.json: "));
  write_text(dir / "eval_Testing.json", "[1, 2");
  CHECK_THROWS_WITH(train::write_report(dir.path.string()), doctest::Contains("eval_Testing.json: not valid JSON"));
}
