#include "cli/bench_command.h"

#include <cstdio>
#include <thread>

#include "bench/comm_bench.h"
#include "cli/launch.h"
#include "comm/factory.h"

namespace frugal::cli {
namespace {

struct CommBenchFlags {
  std::string backend = "gloo";
  int workers = 2;
  bench::CommBenchOptions options;
  bool json = false;
  bool check = false;
  int64_t timeout_ms = 120'000;
  std::string iface;
};

void print_rows(const std::vector<bench::CommBenchRow>& rows, bool json) {
  std::string text = json ? bench::format_json_lines(rows) : bench::format_table(rows);
  std::fputs(text.c_str(), stdout);
  std::fflush(stdout);
}

// One rank of the benchmark over `comm`; rank 0 prints.
Status bench_one_rank(Communicator& comm, const CommBenchFlags& flags) {
  FRUGAL_ASSIGN_OR_RETURN(auto rows, bench::run_comm_bench(comm, flags.options));
  if (comm.rank() == 0) print_rows(rows, flags.json);
  return Status::ok();
}

int run_comm_bench_command(const CommBenchFlags& flags, const std::vector<std::string>& argv) {
  if (Status s = bench::validate(flags.options); !s.is_ok()) return report_error(s);
  if (flags.workers < 1) {
    return report_error(invalid_argument("--workers " + std::to_string(flags.workers) +
                                         " is invalid; it must be >= 1"));
  }
  if (flags.backend == "local") {
    auto group = make_local_group(flags.workers, flags.timeout_ms);
    if (!group.is_ok()) return report_error(group.status());
    std::vector<Status> results(flags.workers);
    std::vector<std::thread> ranks;
    for (int r = 0; r < flags.workers; ++r) {
      ranks.emplace_back([&, r] { results[r] = bench_one_rank(*group.value()[r], flags); });
    }
    for (auto& t : ranks) t.join();
    for (const Status& s : results) {
      if (!s.is_ok()) return report_error(s);
    }
    return 0;
  }
  if (auto parent_exit = launch_ranks_if_parent(flags.backend, flags.workers, argv)) {
    return *parent_exit;
  }
  CommConfig base;
  base.backend = flags.backend;
  base.timeout_ms = flags.timeout_ms;
  base.iface = flags.iface;
  base.check_consistency = flags.check;
  auto config = rank_comm_config(base);
  if (!config.is_ok()) return report_error(config.status());
  auto comm = make_communicator(config.value());
  if (!comm.is_ok()) return report_error(comm.status());
  Status status = bench_one_rank(*comm.value(), flags);
  return status.is_ok() ? 0
                        : report_error(status.with_context("rank " + std::to_string(config->rank)));
}

}  // namespace

void add_bench_commands(CLI::App& app, int& exit_code, const std::vector<std::string>& argv) {
  CLI::App* bench = app.add_subcommand("bench", "Benchmarks (print tables; --json for records)");
  bench->require_subcommand(1);

  auto flags = std::make_shared<CommBenchFlags>();
  CLI::App* comm = bench->add_subcommand(
      "comm", "Collective bandwidth per message size, in the style of nccl-tests");
  comm->add_option("--backend", flags->backend, "Communication backend")
      ->check(CLI::IsMember({"local", "gloo", "mpi"}))
      ->capture_default_str();
  comm->add_option("--workers", flags->workers,
                   "Ranks to start on this host (threads for local, processes for gloo, mpirun "
                   "for mpi); ignored when started by mpirun or with RANK/WORLD_SIZE")
      ->capture_default_str();
  comm->add_option("--ops", flags->options.ops, "Operations to measure")
      ->delimiter(',')
      ->check(CLI::IsMember({"allreduce", "allgather", "allgatherv"}))
      ->capture_default_str();
  comm->add_option("--min-bytes", flags->options.min_bytes, "Smallest message (e.g. 4K, 1M)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--max-bytes", flags->options.max_bytes, "Largest message (e.g. 256M)")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  comm->add_option("--seconds-per-size", flags->options.seconds_per_size,
                   "Approximate time spent timing each size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm->add_option("--timeout-ms", flags->timeout_ms, "Per-operation timeout")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  comm->add_option("--iface", flags->iface,
                   "Network interface for gloo (default: FRUGAL_SOCKET_IFNAME, else loopback)");
  comm->add_flag("--check", flags->check,
                 "Verify before each collective that all ranks agree (adds a round trip)");
  comm->add_flag("--json", flags->json, "Print one JSON record per row instead of a table");
  comm->callback([flags, &exit_code, argv] { exit_code = run_comm_bench_command(*flags, argv); });
}

}  // namespace frugal::cli
