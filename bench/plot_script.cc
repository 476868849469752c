#include "bench/plot_script.h"

#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace frugal::bench {

Status run_plot_script(const std::vector<std::string>& args) {
  const std::string script = std::string(FRUGAL_SOURCE_BENCH_DIR) + "/plot_results.py";
  std::vector<std::string> command = {"/usr/bin/python3", script};
  command.insert(command.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : command) argv.push_back(arg.data());
  argv.push_back(nullptr);
  // posix_spawn rather than system(): no shell, so paths need no quoting.
  pid_t pid = 0;
  if (int error = posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ); error != 0) {
    return unavailable("--plot: cannot run /usr/bin/python3: " + std::string(std::strerror(error)));
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) {
    return internal_error("--plot: waitpid: " + std::string(std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return unavailable("--plot: " + script + " failed (exit " +
                       std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) +
                       "); is python3-matplotlib installed?");
  }
  return Status::ok();
}

}  // namespace frugal::bench
