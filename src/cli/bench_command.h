// `frugal bench ...`: registers the benchmark subcommands on the CLI11 app.
#pragma once

#include <CLI/CLI.hpp>

namespace frugal::cli {

// Adds `bench comm`, `bench compress`, `bench replay` and `bench ckpt` under `app`; `exit_code`
// receives the result when the subcommand runs.
void add_bench_commands(CLI::App& app, int& exit_code, const std::vector<std::string>& argv);

}  // namespace frugal::cli
