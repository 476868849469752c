#include "comm/launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

extern char** environ;

namespace frugal {
namespace {

std::atomic<int> g_interrupt_signal{0};  // set by the signal handler; async-signal-safe

void on_interrupt(int signal) { g_interrupt_signal.store(signal); }

// Installs the SIGINT/SIGTERM handlers for the duration of a launch and restores the old ones.
class InterruptGuard {
 public:
  InterruptGuard() {
    g_interrupt_signal.store(0);
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &old_int_);
    sigaction(SIGTERM, &action, &old_term_);
  }
  ~InterruptGuard() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

std::string describe_exit(const RankExit& e) {
  if (e.signal != 0) {
    return "rank " + std::to_string(e.rank) + " was killed by signal " + std::to_string(e.signal) +
           " (" + strsignal(e.signal) + ")";
  }
  return "rank " + std::to_string(e.rank) + " exited with code " + std::to_string(e.exit_code);
}

std::vector<std::string> child_environment(const LaunchOptions& options, int rank,
                                           const std::string& store_path) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry(*e);
    auto eq = entry.find('=');
    if (eq != std::string::npos) vars[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  vars["RANK"] = std::to_string(rank);
  vars["WORLD_SIZE"] = std::to_string(options.world_size);
  vars["LOCAL_RANK"] = std::to_string(rank);
  vars["LOCAL_WORLD_SIZE"] = std::to_string(options.world_size);
  vars["FRUGAL_STORE_PATH"] = store_path;
  for (const auto& [key, value] : options.env) vars[key] = value;
  std::vector<std::string> out;
  for (const auto& [key, value] : vars) out.push_back(key + "=" + value);
  return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

std::string mpiexec_path() { return FRUGAL_MPIEXEC_PATH; }

std::string self_executable() {
  std::error_code error;
  auto path = std::filesystem::read_symlink("/proc/self/exe", error);
  return error ? std::string() : path.string();
}

Status launch_local_ranks(const LaunchOptions& options, std::vector<RankExit>* exits) {
  if (options.argv.empty()) return invalid_argument("launch: no program given");
  if (options.world_size < 1) {
    return invalid_argument("launch: --workers " + std::to_string(options.world_size) +
                            " is invalid; it must be >= 1");
  }
  std::string store_path;
  bool own_store = options.env.count("FRUGAL_STORE_PATH") == 0;
  if (own_store) {
    std::string pattern = (std::filesystem::temp_directory_path() / "frugal-store-XXXXXX").string();
    if (mkdtemp(pattern.data()) == nullptr) {
      return unavailable("launch: cannot create a rendezvous directory: " +
                         std::string(std::strerror(errno)));
    }
    store_path = pattern;
  }

  InterruptGuard interrupt_guard;
  std::vector<pid_t> pids(options.world_size, -1);
  std::vector<RankExit> results(options.world_size);
  Status status;
  int running = 0;
  for (int rank = 0; rank < options.world_size; ++rank) {
    std::vector<std::string> args = options.argv;
    std::vector<std::string> env = child_environment(options, rank, store_path);
    auto argv = c_strings(args);
    auto envp = c_strings(env);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    std::string log_path;
    if (!options.log_dir.empty()) {
      log_path = options.log_dir + "/rank" + std::to_string(rank) + ".log";
      posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log_path.c_str(),
                                       O_WRONLY | O_CREAT | O_TRUNC, 0644);
      posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    }
    int error = posix_spawn(&pids[rank], argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
      status = unavailable("launch: cannot start rank " + std::to_string(rank) + " (" +
                           options.argv[0] + "): " + std::strerror(error));
      pids[rank] = -1;
      break;
    }
    results[rank].rank = rank;
    ++running;
  }

  // Watch the ranks. After the first failure (or an interrupt), give the rest grace_ms, then
  // SIGKILL them.
  using Clock = std::chrono::steady_clock;
  std::optional<Clock::time_point> kill_deadline;
  bool interrupted_forwarded = false;
  auto begin_teardown = [&] {
    if (!kill_deadline) kill_deadline = Clock::now() + std::chrono::milliseconds(options.grace_ms);
  };
  if (!status.is_ok()) begin_teardown();
  while (running > 0) {
    bool reaped = false;
    for (int rank = 0; rank < options.world_size; ++rank) {
      int wait_status = 0;
      if (pids[rank] <= 0 || waitpid(pids[rank], &wait_status, WNOHANG) != pids[rank]) continue;
      reaped = true;
      pids[rank] = -1;
      --running;
      RankExit& e = results[rank];
      if (WIFSIGNALED(wait_status)) e.signal = WTERMSIG(wait_status);
      if (WIFEXITED(wait_status)) e.exit_code = WEXITSTATUS(wait_status);
      bool failed = e.signal != 0 || e.exit_code != 0;
      if (failed && status.is_ok() && g_interrupt_signal.load() == 0) {
        status = unavailable(describe_exit(e) + "; stopped the other ranks");
      }
      if (failed) begin_teardown();
    }
    if (reaped) continue;
    if (int signal = g_interrupt_signal.load(); signal != 0 && !interrupted_forwarded) {
      interrupted_forwarded = true;
      if (status.is_ok()) status = aborted(std::string("interrupted by ") + strsignal(signal));
      for (pid_t p : pids) {
        if (p > 0) kill(p, SIGINT);
      }
      begin_teardown();
    }
    if (kill_deadline && Clock::now() > *kill_deadline) {
      for (pid_t p : pids) {
        if (p > 0) kill(p, SIGKILL);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (own_store) {
    std::error_code ignored;
    std::filesystem::remove_all(store_path, ignored);
  }
  if (exits != nullptr) *exits = results;
  return status;
}

}  // namespace frugal
