// The report's HTML page: one offline document (inline CSS, SVG charts, images as data: URIs) from what
// the run folder's files hold.
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "train/report_attention.h"
#include "train/report_files.h"

namespace tessera::train {

// The page for run_dir: run.json's object, the metrics, the evaluation when there is one,
// confusion_matrix.png's bytes when drawn (a build without cairo draws none; the page then says why), and
// the attention maps of the shown Testing images when computed.
std::string report_page(const nlohmann::json& run, const Metrics& m, const std::optional<Eval>& e,
                        const std::optional<std::string>& png, const std::string& run_dir,
                        const ReportAttention* attention = nullptr);

}  // namespace tessera::train
