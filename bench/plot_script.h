// Runs this checkout's bench/plot_results.py for the benchmarks' --plot flags.
#pragma once

#include <string>
#include <vector>

#include "core/status.h"

namespace frugal::bench {

// Runs /usr/bin/python3 bench/plot_results.py ARGS... and waits for it. The errors name --plot
// and suggest python3-matplotlib when the script fails.
Status run_plot_script(const std::vector<std::string>& args);

}  // namespace frugal::bench
