// The `frugal` executable: parses the command line with CLI11 and dispatches to subcommands.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli/bench_command.h"
#include "cli/ckpt_command.h"
#include "cli/launch.h"
#include "cli/train_command.h"
#include "core/logging.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv, argv + argc);
  CLI::App app{"Frugal: communication-efficient distributed data-parallel training", "frugal"};
  app.set_version_flag("--version", "frugal 0.1.0");
  app.require_subcommand(0, 1);
  int exit_code = 0;
  // Library messages (e.g. the fusion plan) go to stderr; FRUGAL_LOG_LEVEL=debug shows more.
  const char* level = std::getenv("FRUGAL_LOG_LEVEL");
  if (frugal::Status s = frugal::init_logging("", level != nullptr ? level : "info"); !s.is_ok()) {
    std::fprintf(stderr, "frugal: FRUGAL_LOG_LEVEL: %s\n", s.message().c_str());
    return 2;
  }

  frugal::cli::add_train_command(app, exit_code, args);
  frugal::cli::add_bench_commands(app, exit_code, args);
  frugal::cli::add_ckpt_commands(app, exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 reports usage errors by exception; this is the boundary where they become an exit
    // code (the exception policy in core/status.h).
    return app.exit(e);
  }
  if (app.get_subcommands().empty()) {
    std::fputs(app.help().c_str(), stdout);
    return 0;
  }
  return exit_code;
}
