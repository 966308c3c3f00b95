// The report's HTML page (see report_page.h).
#include "train/report_page.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <stdexcept>

// STATIC: the tests carry their own stb_image_write implementation, and both must link into one program.
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>

#include "data/image.h"
#include "train/report_charts.h"
#include "train/report_figures.h"
#include "train/report_text.h"

namespace tessera::train {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

void append_bytes(void* out, void* data, int size) {
  static_cast<std::string*>(out)->append(static_cast<const char*>(data), size_t(size));
}

// A thumbnail as JPEG bytes (quality 85: small, and fine at ~112 px).
std::string jpeg(const Image& im) {
  std::string out;
  if (!stbi_write_jpg_to_func(append_bytes, &out, im.width, im.height, 3, im.rgb.data(), 85))
    throw std::runtime_error("report: cannot encode a " + std::to_string(im.width) + "x" + std::to_string(im.height) +
                             " thumbnail");
  return out;
}

std::string css(Rgb c) { return "rgb(" + std::to_string(c.r) + "," + std::to_string(c.g) + "," + std::to_string(c.b) + ")"; }

const char* kStyle = R"css(
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#212529;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1240px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h3{font-size:15px;margin:18px 0 8px}
h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:1px solid #e9ecef}
section{background:#fff;border:1px solid #dee2e6;border-radius:8px;padding:18px 22px;margin:0 0 18px}
.sub{color:#6c757d} .note{background:#fff9db;border:1px solid #ffe066;padding:8px 12px;border-radius:6px}
.banner{background:#c92a2a;color:#fff;font-weight:600;padding:12px 16px;border-radius:6px;margin:0 0 18px}
.meta{display:grid;grid-template-columns:repeat(4,1fr);gap:6px 24px;margin:12px 0} .meta .wide{grid-column:span 2}
.meta b{display:block;color:#6c757d;font-weight:500;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
pre{background:#f1f3f5;padding:10px 12px;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere;margin:6px 0}
.opts{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:2px 24px;font-size:13px}
.opts div{overflow-wrap:anywhere} .opts span{color:#6c757d}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{flex:1 1 150px;border:1px solid #e9ecef;border-radius:8px;padding:10px 14px;background:#f8f9fa}
.card b{display:block;font-size:22px;font-variant-numeric:tabular-nums} .card span{color:#6c757d;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:12px}
.bars-row{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums} td,th{padding:4px 10px}
.report td,.report thead th{text-align:right} .report td:first-child{text-align:left}
.report thead th{border-bottom:2px solid #dee2e6} .report tr.sep td{padding-top:10px;border-top:1px solid #dee2e6}
.cm th{font-weight:500;font-size:12px;text-align:right} .cm th.col{text-align:center;vertical-align:bottom;max-width:84px}
.cm td{width:84px;height:54px;text-align:center;border:1px solid #fff}
.cm td small{display:block;font-size:11px;opacity:.85} .cm .corner{font-size:11px;color:#6c757d}
.results{display:flex;flex-wrap:wrap;gap:16px 40px;align-items:flex-start}
img.cmpng{max-width:100%;border:1px solid #e9ecef;border-radius:6px}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:132px;padding:4px;border:3px solid #2b8a3e;border-radius:6px;background:#f8f9fa}
figure.wrong{border-color:#c92a2a;background:#fff5f5}
figure .img{height:112px;display:flex;align-items:center;justify-content:center}
figure.maps{width:auto} figure.maps figcaption{max-width:304px}
figure .pair{display:flex;gap:4px} img.attn{width:150px;height:auto}
figcaption{font-size:11px;line-height:1.35;margin-top:4px}
figcaption .file{font-weight:600;white-space:nowrap;text-overflow:ellipsis;overflow:hidden} figcaption .bad{color:#c92a2a;font-weight:700}
.tag{background:#364fc7;color:#fff;border-radius:3px;padding:0 4px;font-size:10px}
)css";

std::string meta_item(const std::string& name, const std::string& value, bool wide = false) {
  return std::string(wide ? "<div class='wide'>" : "<div>") + "<b>" + esc(name) + "</b>" + esc(value) + "</div>";
}

std::string card(const std::string& value, const std::string& caption) {
  return "<div class='card'><b>" + esc(value) + "</b><span>" + esc(caption) + "</span></div>";
}

std::string classification_table(const Eval& e) {
  std::vector<double> novel_recall;
  if (field(e.novel, "per_class_recall").is_array())
    for (const json& v : e.novel["per_class_recall"]) novel_recall.push_back(v.is_number() ? v.get<double>() : NAN);
  const bool novel = novel_recall.size() == e.classes.size();
  std::string s = "<table class='report'><thead><tr><th></th><th>precision</th><th>recall</th><th>f1-score</th><th>support</th>" +
                  std::string(novel ? "<th>novel recall</th>" : "") + "</tr></thead><tbody>";
  auto row = [&](const std::string& name, const ClassMetrics& m, const std::string& extra, const char* cls) {
    s += std::string("<tr") + cls + "><td>" + esc(name) + "</td><td>" + f4(m.precision) + "</td><td>" + f4(m.recall) +
         "</td><td>" + f4(m.f1) + "</td><td>" + std::to_string(m.support) + "</td>" +
         (novel ? "<td>" + extra + "</td>" : "") + "</tr>";
  };
  for (size_t i = 0; i < e.classes.size(); ++i) row(e.classes[i], e.per_class[i], novel ? f4(novel_recall[i]) : "", "");
  s += "<tr class='sep'><td>accuracy</td><td></td><td></td><td>" + f4(e.accuracy) + "</td><td>" + std::to_string(e.total) +
       "</td>" + (novel ? "<td>" + f4(field_number(e.novel, "accuracy")) + "</td>" : "") + "</tr>";
  row("macro avg", e.macro, "", "");
  row("weighted avg", e.weighted, "", "");
  return s + "</tbody></table>";
}

// A class name that may wrap after its underscores only (glioma_ / tumor), never inside a word.
std::string breakable(const std::string& name) {
  std::string s = esc(name);
  for (size_t p = 0; (p = s.find('_', p)) != std::string::npos; p += 6) s.insert(p + 1, "<wbr>");
  return s;
}

std::string confusion_table(const Eval& e) {
  std::string s = "<table class='cm'><tr><th class='corner'>true \\ predicted</th>";
  for (const auto& c : e.classes) s += "<th class='col'>" + breakable(c) + "</th>";
  s += "</tr>";
  for (size_t i = 0; i < e.classes.size(); ++i) {
    s += "<tr><th>" + esc(e.classes[i]) + "</th>";
    for (size_t j = 0; j < e.classes.size(); ++j) {
      const double share = row_share(e.confusion[i], j);
      s += "<td style='background:" + css(blues(share)) + ";color:" + (share > 0.5 ? "#fff" : "#212529") + "'>" +
           std::to_string(e.confusion[i][j]) + "<small>" + pct(share) + "</small></td>";
    }
    s += "</tr>";
  }
  return s + "</table>";
}

// A shown image's caption: file, true and predicted class, probability, novelty.
std::string caption(const Eval& e, const Prediction& p) {
  const bool right = p.label == p.pred;
  return "<figcaption><div class='file'>" + esc(fs::path(p.path).filename().string()) + "</div>true: " +
         breakable(e.classes[size_t(p.label)]) + "<br>" + (right ? "&#10003; pred: " : "<span class='bad'>&#10007; pred: ") +
         breakable(e.classes[size_t(p.pred)]) + (right ? "" : "</span>") + "<br>" +
         (std::isfinite(p.prob) ? "p = " + fmt("%.2f", p.prob) : "") + (p.novel ? " <span class='tag'>novel</span>" : "") +
         "</figcaption>";
}

// For each class, up to 4 correct and 4 wrong Testing images in file order (shown_predictions), as ~112 px
// JPEG thumbnails.
std::string thumbnails(const Eval& e) {
  constexpr int kSize = 112;
  std::vector<int64_t> total(e.classes.size(), 0), correct(e.classes.size(), 0);
  for (const Prediction& p : e.predictions)
    if (size_t(p.label) < e.classes.size()) ++total[size_t(p.label)], correct[size_t(p.label)] += p.label == p.pred;
  std::vector<std::string> figs(e.classes.size());
  std::string s, skipped;
  for (size_t i : shown_predictions(e)) {
    const Prediction& p = e.predictions[i];
    const bool right = p.label == p.pred;
    Image im;
    try {
      im = decode_image(p.path);
    } catch (const ImageError& err) {
      skipped += "<li>" + esc(err.what()) + "</li>";
      continue;
    }
    const double f = std::min(1.0, double(kSize) / std::max(im.width, im.height));
    im = resize(im, std::max(1, int(std::lround(im.width * f))), std::max(1, int(std::lround(im.height * f))), Filter::Bilinear);
    const std::string file = fs::path(p.path).filename().string();
    figs[size_t(p.label)] += std::string("<figure class='") + (right ? "right" : "wrong") + "' title='" + esc(p.path) +
                             "'><div class='img'><img alt='" + esc(file) + "' width='" + std::to_string(im.width) +
                             "' height='" + std::to_string(im.height) + "' src='data:image/jpeg;base64," +
                             base64(jpeg(im)) + "'></div>" + caption(e, p) + "</figure>";
  }
  for (size_t c = 0; c < e.classes.size(); ++c) {
    s += "<h3>" + esc(e.classes[c]) + " <span class='sub'>— " + std::to_string(correct[c]) + " of " +
         std::to_string(total[c]) + " correct</span></h3>";
    s += total[c] == 0 ? "<p class='sub'>No predictions for this class.</p>" : "<div class='thumbs'>" + figs[c] + "</div>";
  }
  if (!skipped.empty()) s += "<p class='note'>Images that could not be read were skipped:</p><ul>" + skipped + "</ul>";
  return s;
}

// The same images' rollout and relevance maps, per class.
std::string attention_maps(const Eval& e, const ReportAttention& a) {
  if (!a.note.empty()) return "<p class='note'>" + esc(a.note) + "</p>";
  std::vector<std::string> figs(e.classes.size());
  for (size_t i : shown_predictions(e)) {
    const Prediction& p = e.predictions[i];
    const auto it = a.by_path.find(p.path);
    if (it == a.by_path.end()) continue;
    auto img = [](const std::string& png, const char* what) {
      return png.empty() ? std::string() : std::string("<img class='attn' alt='") + what + "' src='data:image/png;base64," +
                                               base64(png) + "'>";
    };
    figs[size_t(p.label)] += std::string("<figure class='maps ") + (p.label == p.pred ? "right" : "wrong") + "' title='" +
                             esc(p.path) + "'><div class='pair'>" + img(it->second.rollout_png, "rollout") +
                             img(it->second.relevance_png, "relevance") + "</div>" + caption(e, p) + "</figure>";
  }
  std::string s = "<p class='sub'>" + esc(a.method) + "</p>";
  for (size_t c = 0; c < e.classes.size(); ++c)
    if (!figs[c].empty()) s += "<h3>" + esc(e.classes[c]) + "</h3><div class='thumbs'>" + figs[c] + "</div>";
  return s;
}

}  // namespace

std::string report_page(const json& run, const Metrics& m, const std::optional<Eval>& e,
                        const std::optional<std::string>& png, const std::string& run_dir,
                        const ReportAttention* attention) {
  std::vector<std::string> classes;
  if (field(run, "classes").is_array())
    for (const json& c : run["classes"]) classes.push_back(text_of(c));
  const json& data = field(run, "data");
  const std::string model = text_of(field(run, "model"));

  // The best epoch: the last one marked best (each marks a new best on validation).
  std::optional<int64_t> best;
  for (const auto& [epoch, j] : m.epochs)
    if (field(j, "best").is_boolean() && j["best"].get<bool>()) best = epoch;

  std::string h = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
                  "content='width=device-width,initial-scale=1'><title>" + esc(model) + " training report — tessera</title><style>" +
                  kStyle + kChartStyle + "</style></head><body><main>";
  if (field(data, "synthetic").is_boolean() && data["synthetic"].get<bool>())
    h += "<div class='banner'>SYNTHETIC DATA — this run trained and was evaluated on generated images, not the "
         "real data set. Its numbers say nothing about real performance.</div>";

  // ---- header
  h += "<section><h1>Training report: " + esc(model) + "</h1><div class='sub'>" + esc(run_dir) + " · started " +
       esc(text_of(field(run, "started"))) + " · tessera " + esc(text_of(field(run, "tessera_version"))) + "</div>";
  std::string class_list;
  for (const auto& c : classes) class_list += (class_list.empty() ? "" : ", ") + c;
  h += "<div class='meta'>" + meta_item("model", model) + meta_item("device", text_of(field(run, "device"))) +
       meta_item("precision", text_of(field(run, "precision"))) + meta_item("image size", text_of(field(run, "image_size"))) +
       meta_item(std::to_string(classes.size()) + " classes", class_list, true) +
       meta_item("data root", text_of(field(data, "root")), true) +
       "</div><b>command</b><pre>" + esc(text_of(field(run, "command"))) + "</pre>";
  if (field(run, "options").is_object() && !run["options"].empty()) {
    h += "<h3>options</h3><div class='opts'>";
    for (const auto& [k, v] : run["options"].items()) h += "<div><span>" + esc(k) + "</span> " + esc(text_of(v)) + "</div>";
    h += "</div>";
  }
  h += "</section>";

  // ---- summary
  h += "<section><h2>Summary</h2><div class='cards'>";
  h += card(std::to_string(m.epochs.size()), "epochs logged");
  if (best) {
    const json& b = m.epochs.at(*best);
    h += card(std::to_string(*best), "best epoch") + card(f4(field_number(b, "val_accuracy")), "best validation accuracy") +
         card(f4(field_number(b, "val_f1_macro")), "validation macro F1 at the best epoch");
  }
  if (e) {
    h += card(f4(e->accuracy), "Testing accuracy (" + std::to_string(e->total) + " images)");
    if (field(e->novel, "accuracy").is_number()) h += card(f4(field_number(e->novel, "accuracy")), "novel-subset accuracy");
  }
  if (!m.steps.empty() && std::isfinite(field_number(m.steps.rbegin()->second, "elapsed_s")))
    h += card(fmt("%.1f min", field_number(m.steps.rbegin()->second, "elapsed_s") / 60), "training time");
  h += "</div>";
  if (!e) h += "<p class='note'>No evaluation yet: eval_Testing.json is not in the run folder (training still going, or not evaluated).</p>";
  h += "</section>";

  // ---- training curves
  h += "<section><h2>Training curves</h2>";
  if (m.steps.empty() && m.epochs.empty()) {
    h += std::string("<p class='note'>") + (m.present ? "metrics.jsonl has no steps or epochs yet." : "No metrics.jsonl yet: training has not logged a step.") + "</p>";
  } else {
    Series step_loss{"training loss (step)", "#74a9cf", {}, 1, 0.7}, lr{"learning rate", "#1098ad", {}, 1.5},
        grad{"gradient norm (step)", "#5f3dc4", {}, 1, 0.8};
    for (const auto& [g, j] : m.steps) {
      step_loss.points.emplace_back(double(g), field_number(j, "loss"));
      lr.points.emplace_back(double(g), field_number(j, "lr"));
      grad.points.emplace_back(double(g), field_number(j, "grad_norm"));
    }
    Series train_loss{"training loss (epoch)", "#1c5d99", {}, 2.5}, val_loss{"validation loss", "#f08c00", {}, 2.5};
    Series acc{"validation accuracy", "#2b8a3e", {}, 2.5}, f1w{"validation weighted F1", "#7048e8", {}, 2},
        f1m{"validation macro F1", "#d6336c", {}, 2}, tacc{"training accuracy (augmented)", "#868e96", {}, 1.5};
    train_loss.dots = val_loss.dots = acc.dots = f1w.dots = f1m.dots = true;
    tacc.dashed = true;
    for (const auto& [ep, j] : m.epochs) {
      const double g = field_number(j, "global_step"), x = double(ep);
      train_loss.points.emplace_back(g, field_number(j, "train_loss"));
      val_loss.points.emplace_back(g, field_number(j, "val_loss"));
      acc.points.emplace_back(x, field_number(j, "val_accuracy"));
      f1w.points.emplace_back(x, field_number(j, "val_f1_weighted"));
      f1m.points.emplace_back(x, field_number(j, "val_f1_macro"));
      tacc.points.emplace_back(x, field_number(j, "train_accuracy"));
    }
    const std::string best_label = best ? "best: epoch " + std::to_string(*best) : "";
    std::optional<double> best_step;
    if (best && std::isfinite(field_number(m.epochs.at(*best), "global_step"))) best_step = field_number(m.epochs.at(*best), "global_step");
    Chart loss{"Loss", "step", "cross-entropy loss", {step_loss, train_loss, val_loss}, best_step, best_label, {}, false};
    Chart metrics{"Validation metrics per epoch", "epoch", "score", {acc, f1w, f1m, tacc}, best, best_label,
                  std::pair(0.0, 1.0), true};
    Chart rate{"Learning rate", "step", "learning rate", {lr}, best_step, best_label, {}, false};
    Chart norm{"Gradient norm (before clipping)", "step", "global L2 norm", {grad}, best_step, best_label, {}, false};
    h += "<div class='charts'>";
    // grad_norm is 0 on every step when clipping is off (nothing measured it): no chart then.
    const bool measured = std::any_of(grad.points.begin(), grad.points.end(), [](auto p) { return p.second > 0; });
    for (const Chart* c : {&loss, &metrics, &rate, &norm})
      if (c != &norm || measured) h += line_chart(*c);
    h += "</div>";
    if (m.epochs.empty()) h += "<p class='note'>No epoch has finished yet: only per-step values are shown.</p>";
  }
  h += "</section>";

  // ---- Testing results
  h += "<section><h2>Testing results</h2>";
  if (!e) {
    h += "<p class='note'>No evaluation yet: the best checkpoint has not been evaluated on the Testing split.</p>";
  } else {
    h += "<div class='cards'>" + card(f4(e->accuracy) + " (" + pct(e->accuracy) + ")", "accuracy on " + std::to_string(e->total) + " Testing images");
    if (e->novel.is_object())
      h += card(f4(field_number(e->novel, "accuracy")) + " (" + pct(field_number(e->novel, "accuracy")) + ")",
                "accuracy on the novel subset: " + text_of(field(e->novel, "correct")) + " of " +
                    text_of(field(e->novel, "total")) + " correct (Testing images with no near-copy in Training)");
    if (std::isfinite(e->loss)) h += card(f4(e->loss), "Testing loss");
    h += "</div>";
    if (e->skipped > 0)
      h += "<p class='note'>" + std::to_string(e->skipped) + " Testing images could not be read and are left out of every number.</p>";
    h += "<p class='sub'>checkpoint " + esc(e->checkpoint) + "</p><div class='results'><div><h3>Per class</h3>" +
         classification_table(*e) + "</div><div><h3>Confusion matrix</h3>" + confusion_table(*e) +
         "</div></div><h3>confusion_matrix.png</h3>" +
         (png ? "<img class='cmpng' alt='confusion matrix' src='data:image/png;base64," + base64(*png) + "'>"
              : "<p class='note'>No confusion_matrix.png: " + esc(figures_unavailable()) + ".</p>");
  }
  h += "</section>";

  // ---- class distribution
  h += "<section><h2>Class distribution</h2>";
  std::string bars;
  const json& counts = field(data, "counts");
  for (const char* split : {"train", "validation", "Testing"})
    if (field(counts, split).is_array()) {
      std::vector<int64_t> v;
      for (const json& x : counts[split]) v.push_back(x.is_number_integer() ? x.get<int64_t>() : 0);
      bars += bar_chart(split, classes, v);
    }
  h += bars.empty() ? "<p class='note'>run.json has no class counts.</p>" : "<div class='bars-row'>" + bars + "</div>";
  h += "</section>";

  // ---- images
  h += "<section><h2>Testing images</h2>";
  if (e) h += "<p class='sub'>Per class, up to 4 correct (green) and 4 wrong (red) predictions in file order; "
              "the number is the predicted class's probability.</p>" + thumbnails(*e);
  else h += "<p class='note'>No evaluation yet.</p>";
  h += "</section>";
  if (e && attention)
    h += "<section><h2>Where the model looked</h2>" + attention_maps(*e, *attention) + "</section>";
  h += "<p class='sub'>Written by tessera " TESSERA_VERSION " (tessera report).</p></main></body></html>\n";
  return h;
}

}  // namespace tessera::train
