#include "cli/launch.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "comm/factory.h"
#include "comm/launcher.h"
#include "core/cpu_affinity.h"
#include "core/logging.h"

namespace frugal::cli {
namespace {

// OpenMPI refuses to start as root unless told twice; Frugal's own launches tell it, so users
// never have to.
void allow_mpirun_as_root() {
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
}

int exec_mpirun(int workers, const std::vector<std::string>& argv) {
  const std::string mpirun = mpiexec_path();
  if (mpirun.empty()) {
    return report_error(
        unimplemented("this build of frugal has no MPI backend: install libopenmpi-dev and re-run "
                      "scripts/setup"));
  }
  allow_mpirun_as_root();
  // More ranks than cores is fine for Frugal's communication-bound ranks (each rank's compute
  // threads are capped separately), so allow oversubscription.
  std::vector<std::string> args = {mpirun, "-np", std::to_string(workers), "--oversubscribe",
                                   self_executable()};
  args.insert(args.end(), argv.begin() + 1, argv.end());
  std::vector<char*> c_args;
  for (auto& a : args) c_args.push_back(a.data());
  c_args.push_back(nullptr);
  execv(c_args[0], c_args.data());
  return report_error(unavailable("cannot run " + mpirun + ": " + std::strerror(errno)));
}

// --bind-cores for the calling thread, a rank that has started no thread of its own yet (those it
// starts later inherit the binding). The OS refusing is a warning, not an error: binding only
// places the work, and a thread-rank that stopped here would leave the others waiting.
void bind_rank_to_its_cpus(int local_rank, int local_size) {
  auto cpus = allowed_cpus();
  Status bound = cpus.status();
  std::vector<int> share;
  if (cpus.is_ok()) {
    share = cpu_share(cpus.value(), local_rank, local_size);
    bound = bind_this_thread(share);
  }
  if (!bound.is_ok()) {
    spdlog::warn("--bind-cores: local rank {} runs unbound: {}", local_rank, bound.message());
  } else {
    spdlog::debug("--bind-cores: local rank {} of {} on CPUs {}", local_rank, local_size,
                  format_cpu_list(share));
  }
}

// Runs body(comm) on `workers` thread-ranks of a local-backend group and returns the first
// failure, naming its rank.
Status run_thread_ranks(int workers, int64_t timeout_ms, bool bind_cores,
                        const std::function<Status(Communicator&)>& body) {
  FRUGAL_ASSIGN_OR_RETURN(auto group, make_local_group(workers, timeout_ms));
  std::vector<Status> results(static_cast<size_t>(workers));
  std::vector<std::thread> ranks;
  for (int r = 0; r < workers; ++r) {
    ranks.emplace_back([&, r] {
      if (bind_cores) bind_rank_to_its_cpus(r, workers);
      results[static_cast<size_t>(r)] = body(*group[r]);
    });
  }
  for (auto& t : ranks) t.join();
  for (int r = 0; r < workers; ++r) {
    const Status& s = results[static_cast<size_t>(r)];
    if (!s.is_ok()) return s.with_context("rank " + std::to_string(r));
  }
  return Status::ok();
}

}  // namespace

const char* const kBindCoresHelp =
    "Run each worker on its own share of this host's CPUs (those the job may use, split in "
    "contiguous runs by the worker's place on the host; with more workers than CPUs, one CPU "
    "each, spread evenly). Faster where workers would otherwise trade cores and caches; leave it "
    "off on a machine others share";

std::optional<int> launch_ranks_if_parent(const std::string& backend, int workers,
                                          const std::vector<std::string>& argv) {
  EnvLookup env = process_env();
  // Reject a bad environment (RANK without WORLD_SIZE, RANK >= WORLD_SIZE, ...) before deciding
  // whether this process is a launcher or a rank.
  CommConfig requested;
  requested.backend = backend;
  if (auto checked = comm_config_from_env(requested, env); !checked.is_ok()) {
    return report_error(checked.status());
  }
  if (backend == "gloo" && !launched_torchrun_style(env)) {
    LaunchOptions options;
    options.argv = argv;
    options.argv[0] = self_executable();
    options.world_size = workers;
    options.env["FRUGAL_BACKEND"] = "gloo";
    Status status = launch_local_ranks(options);
    return status.is_ok() ? 0 : report_error(status);
  }
  if (backend == "mpi" && !launched_by_mpirun(env)) {
    if (launched_torchrun_style(env)) {
      return report_error(invalid_argument(
          "--backend mpi takes rank and size from mpirun, but RANK/WORLD_SIZE are set: start "
          "with mpirun, or use --backend gloo for torchrun-style launches"));
    }
    return exec_mpirun(workers, argv);
  }
  return std::nullopt;
}

int run_job_ranks(const RankJob& job, const std::vector<std::string>& argv,
                  const std::function<Status(Communicator&)>& body) {
  if (job.backend == "local") {
    Status status = run_thread_ranks(job.workers, job.timeout_ms, job.bind_cores, body);
    return status.is_ok() ? 0 : report_error(status);
  }
  if (auto parent_exit = launch_ranks_if_parent(job.backend, job.workers, argv)) {
    return *parent_exit;
  }
  CommConfig base;
  base.backend = job.backend;
  base.timeout_ms = job.timeout_ms;
  base.check_consistency = job.check_consistency;
  CommFlags given;
  if (job.timeout_given) given.timeout_ms = job.timeout_ms;
  if (!job.iface.empty()) given.iface = job.iface;
  auto config = rank_comm_config(base, given);
  if (!config.is_ok()) return report_error(config.status());
  if (job.bind_cores) {
    if (config->local_size == 0 && config->local_rank > 0) {
      return report_error(invalid_argument(
          "--bind-cores needs LOCAL_WORLD_SIZE (the ranks on this host) beside LOCAL_RANK=" +
          std::to_string(config->local_rank)));
    }
    // Before the communicator starts its threads. No launcher variables: alone on this host.
    bind_rank_to_its_cpus(config->local_rank, std::max(1, config->local_size));
  }
  auto comm = make_communicator(config.value());
  if (!comm.is_ok()) return report_error(comm.status());
  Status status = body(*comm.value());
  return status.is_ok() ? 0
                        : report_error(status.with_context("rank " + std::to_string(config->rank)));
}

Result<CommConfig> rank_comm_config(CommConfig base, const CommFlags& given) {
  allow_mpirun_as_root();  // harmless when not under MPI; needed if MPI spawns helpers
  return comm_config_from_env(std::move(base), process_env(), given);
}

int report_error(const Status& status) {
  std::fprintf(stderr, "frugal: error: %s\n", status.message().c_str());
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kOutOfRange:
      return 2;
    case StatusCode::kAborted:
      return 130;
    default:
      return 1;
  }
}

}  // namespace frugal::cli
