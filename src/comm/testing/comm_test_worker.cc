// A rank process for the multi-process tests of comm/: joins a communicator configured from the
// environment (as `frugal` does), runs a scenario, and exits 0 on success or 1 with the error on
// stderr. Scenarios:
//   allreduce-loop ITERATIONS        checked f32 allreduces of 1 Mi elements
//   die-in-loop ITERATIONS RANK AT   as allreduce-loop, but RANK SIGKILLs itself at iteration AT
//   join-only                        create the communicator and exit
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "comm/factory.h"

namespace {

int fail(const frugal::Status& status) {
  std::fprintf(stderr, "worker error: %s\n", status.to_string().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fprintf(stderr,
                 "usage: comm_test_worker allreduce-loop N | die-in-loop N RANK AT | join-only\n");
    return 2;
  }
  auto config = frugal::comm_config_from_env(frugal::CommConfig{});
  if (!config.is_ok()) {
    std::fprintf(stderr, "worker error: %s\n", config.status().to_string().c_str());
    return 2;
  }
  auto made = frugal::make_communicator(config.value());
  if (!made.is_ok()) return fail(made.status());
  frugal::Communicator& comm = *made.value();
  if (args[0] == "join-only") return 0;

  const int iterations = args.size() > 1 ? std::atoi(args[1].c_str()) : 10;
  const int die_rank =
      args[0] == "die-in-loop" && args.size() > 3 ? std::atoi(args[2].c_str()) : -1;
  const int die_at = args[0] == "die-in-loop" && args.size() > 3 ? std::atoi(args[3].c_str()) : -1;
  std::vector<float> values(1 << 20);
  for (int it = 0; it < iterations; ++it) {
    if (comm.rank() == die_rank && it == die_at) raise(SIGKILL);
    std::fill(values.begin(), values.end(), static_cast<float>(comm.rank() + 1));
    frugal::MutableView view{
        values.data(), frugal::DType::kF32, {static_cast<int64_t>(values.size())}};
    if (auto status = comm.allreduce(view, frugal::ReduceOp::kSum); !status.is_ok()) {
      return fail(status);
    }
    const float expected = comm.size() * (comm.size() + 1) / 2.0f;
    if (values.front() != expected || values.back() != expected) {
      return fail(frugal::internal_error("allreduce gave a wrong sum"));
    }
  }
  std::printf("rank %d: %d allreduces ok\n", comm.rank(), iterations);
  return 0;
}
