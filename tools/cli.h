// The `tessera` command-line program's subcommands. Each tools/<name>.cpp adds one subcommand to the app;
// tools/tessera.cpp owns main(), which turns any exception into one `tessera: error: ...` line and exit 1.
#pragma once
#include <CLI/CLI.hpp>

namespace tessera::cli {

// Each registers its subcommand and the callback that runs it. A callback signals failure by throwing
// (any std::exception) or, for a command with its own verdict (selfcheck), by setting `exit_code`.
void add_inspect(CLI::App& app);
void add_data(CLI::App& app);
void add_predict(CLI::App& app);
void add_selfcheck(CLI::App& app, int& exit_code);

}  // namespace tessera::cli
