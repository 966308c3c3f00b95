// The `tessera` command-line program's subcommands. Each tools/<name>.cpp adds one subcommand to the app;
// tools/tessera.cpp owns main(), which turns any exception into one `tessera: error: ...` line and exit 1.
#pragma once
#include <string>

#include <CLI/CLI.hpp>

#include "data/preprocess.h"
#include "models/config.h"

namespace tessera::cli {

// The command line as typed (set by main), for the run's records.
std::string& command_line();

// Each registers its subcommand and the callback that runs it. A callback signals failure by throwing
// (any std::exception) or, for a command with its own verdict (selfcheck), by setting `exit_code`.
void add_inspect(CLI::App& app);
void add_data(CLI::App& app);
void add_predict(CLI::App& app);
void add_attn(CLI::App& app);
void add_train(CLI::App& app);
void add_eval(CLI::App& app);
void add_report(CLI::App& app);
void add_bench(CLI::App& app);
void add_selfcheck(CLI::App& app, int& exit_code);

// Shared by the commands that load a model from --model NAME / --weights FILE / --config FILE (predict,
// attn); defined in tools/predict.cpp. The config: --config, else config.json beside the weights, else the
// preset with the checkpoint's own class count; `command` prefixes the error.
models::ModelConfig resolve_model_config(const std::string& command, const std::string& model,
                                        const std::string& weights_file, const std::string& config);
// The processor a model given without its checkpoint folder gets (CvT: ConvNext at 224; ViT: its size).
ProcessorConfig default_processor(const models::ModelConfig& c);

}  // namespace tessera::cli
