// Collective benchmark in the style of nccl-tests: for each message size, time an operation on
// one communicator and report time, algorithm bandwidth and bus bandwidth. Run on every rank at
// once; every rank returns the same rows (times are the maximum over ranks).
#pragma once

#include <string>
#include <vector>

#include "comm/communicator.h"

namespace frugal::bench {

struct CommBenchOptions {
  std::vector<std::string> ops = {"allreduce", "allgather", "allgatherv"};
  size_t min_bytes = 4 << 10;    // 4 KiB
  size_t max_bytes = 256 << 20;  // 256 MiB
  // Each size is timed for about this long (at least min_iterations, at most max_iterations).
  double seconds_per_size = 0.25;
  int min_iterations = 3;
  int max_iterations = 200;
  int warmup_iterations = 1;
};

struct CommBenchRow {
  std::string backend;
  std::string op;
  size_t bytes = 0;  // nccl-tests convention: the buffer size for allreduce, the total gathered
                     // (output) size for allgather and allgatherv
  int world_size = 0;
  int iterations = 0;
  double seconds = 0;     // mean time of one operation (max over ranks)
  double algbw_gbps = 0;  // bytes / seconds, in GB/s (1e9 bytes per second)
  double busbw_gbps = 0;  // algbw scaled to the per-link traffic of a ring: allreduce x 2(n-1)/n,
                          // allgather(v) x (n-1)/n
};

// Validates names and sizes; the error lists what is valid.
Status validate(const CommBenchOptions& options);

// Collective: every rank calls it with the same options.
Result<std::vector<CommBenchRow>> run_comm_bench(Communicator& comm,
                                                 const CommBenchOptions& options);

// nccl-tests-like text table of `rows` (one block per op).
std::string format_table(const std::vector<CommBenchRow>& rows);
// One JSON object per row and line: {backend, op, bytes, world_size, seconds, algbw_gbps,
// busbw_gbps, iterations}.
std::string format_json_lines(const std::vector<CommBenchRow>& rows);

}  // namespace frugal::bench
