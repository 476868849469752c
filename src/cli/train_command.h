// `frugal train`: data-parallel training of a model on N workers (the main job).
#pragma once

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace frugal::cli {

// Adds the `train` subcommand to `app`; its callback stores the exit code in `exit_code`.
// `argv` is the full command line (ranks are started by re-running it).
void add_train_command(CLI::App& app, int& exit_code, const std::vector<std::string>& argv);

}  // namespace frugal::cli
