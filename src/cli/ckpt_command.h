// `frugal ckpt ...`: reports on checkpoint directories (inspect) and checks them byte for byte
// (verify). Read-only: nothing here writes a checkpoint. Not thread-safe (process-level).
#pragma once

#include <CLI/CLI.hpp>

namespace frugal::cli {

// Adds `ckpt inspect` and `ckpt verify` under `app`; `exit_code` receives the result when the
// subcommand runs.
void add_ckpt_commands(CLI::App& app, int& exit_code);

}  // namespace frugal::cli
