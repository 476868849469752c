#include "bench/comm_bench.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>

namespace frugal::bench {
namespace {

const std::vector<std::string>& known_ops() {
  static const std::vector<std::string> kOps = {"allreduce", "allgather", "allgatherv"};
  return kOps;
}

double bus_factor(const std::string& op, int n) {
  if (n <= 1) return 0.0;
  double ring = static_cast<double>(n - 1) / n;
  return op == "allreduce" ? 2.0 * ring : ring;
}

// Per-rank byte counts of an allgatherv of `total` bytes: uneven on purpose, rank r gets a share
// proportional to r + 1, rounded down to whole floats, the rest going to the last rank.
std::vector<size_t> uneven_counts(size_t total, int n) {
  std::vector<size_t> counts(n);
  size_t weights = static_cast<size_t>(n) * (n + 1) / 2, assigned = 0;
  for (int r = 0; r < n; ++r) {
    counts[r] = total * (r + 1) / weights / 4 * 4;
    assigned += counts[r];
  }
  counts[n - 1] += total - assigned;
  return counts;
}

// Buffers for one op and size, allocated once and reused across iterations.
class OpRunner {
 public:
  OpRunner(Communicator& comm, const std::string& op, size_t bytes) : comm_(comm), op_(op) {
    const int n = comm.size();
    if (op == "allreduce") {
      data_.assign(bytes / 4 * 4, std::byte{1});
    } else if (op == "allgather") {
      size_t per_rank = bytes / n;
      in_.assign(per_rank, std::byte{2});
      data_.resize(per_rank * n);
    } else {
      counts_ = uneven_counts(bytes, n);
      in_.assign(counts_[comm.rank()], std::byte{3});
      data_.resize(bytes);
    }
  }

  size_t reported_bytes() const { return data_.size(); }

  Status run_once() {
    if (op_ == "allreduce") {
      return comm_.allreduce(flat_view(data_.data(), DType::kF32, data_.size() / 4),
                             ReduceOp::kSum);
    }
    if (op_ == "allgather") return comm_.allgather(in_, data_);
    return comm_.allgatherv(in_, counts_, data_);
  }

 private:
  Communicator& comm_;
  std::string op_;
  std::vector<std::byte> in_, data_;
  std::vector<size_t> counts_;
};

// The maximum of `value` over all ranks (the slowest rank defines a collective's time).
Result<double> max_over_ranks(Communicator& comm, double value) {
  FRUGAL_RETURN_IF_ERROR(comm.allreduce(flat_view(&value, DType::kF64, 1), ReduceOp::kMax));
  return value;
}

Result<double> time_iterations(Communicator& comm, OpRunner& runner, int iterations) {
  FRUGAL_RETURN_IF_ERROR(comm.barrier());
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iterations; ++i) FRUGAL_RETURN_IF_ERROR(runner.run_once());
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return max_over_ranks(comm, seconds / iterations);
}

}  // namespace

Status validate(const CommBenchOptions& options) {
  for (const std::string& op : options.ops) {
    if (std::find(known_ops().begin(), known_ops().end(), op) == known_ops().end()) {
      return invalid_argument("unknown op '" + op + "'; valid: allreduce, allgather, allgatherv");
    }
  }
  if (options.min_bytes == 0 || options.min_bytes > options.max_bytes) {
    return invalid_argument("message sizes must satisfy 0 < min_bytes <= max_bytes; got " +
                            std::to_string(options.min_bytes) + " and " +
                            std::to_string(options.max_bytes));
  }
  if (options.min_iterations < 1 || options.max_iterations < options.min_iterations) {
    return invalid_argument("iterations must satisfy 1 <= min <= max");
  }
  return Status::ok();
}

Result<std::vector<CommBenchRow>> run_comm_bench(Communicator& comm,
                                                 const CommBenchOptions& options) {
  FRUGAL_RETURN_IF_ERROR(validate(options));
  std::vector<CommBenchRow> rows;
  for (const std::string& op : options.ops) {
    for (size_t bytes = options.min_bytes; bytes <= options.max_bytes; bytes *= 2) {
      OpRunner runner(comm, op, bytes);
      for (int i = 0; i < options.warmup_iterations; ++i) FRUGAL_RETURN_IF_ERROR(runner.run_once());
      // One timed probe sizes the run; every rank uses the same (max) estimate.
      FRUGAL_ASSIGN_OR_RETURN(double probe, time_iterations(comm, runner, 1));
      int iterations = static_cast<int>(std::clamp(options.seconds_per_size / std::max(probe, 1e-9),
                                                   double(options.min_iterations),
                                                   double(options.max_iterations)));
      FRUGAL_ASSIGN_OR_RETURN(double seconds, time_iterations(comm, runner, iterations));
      CommBenchRow row;
      row.backend = std::string(comm.backend());
      row.op = op;
      row.bytes = runner.reported_bytes();
      row.world_size = comm.size();
      row.iterations = iterations;
      row.seconds = seconds;
      row.algbw_gbps = static_cast<double>(row.bytes) / seconds / 1e9;
      row.busbw_gbps = row.algbw_gbps * bus_factor(op, comm.size());
      rows.push_back(row);
      if (bytes > options.max_bytes / 2) break;  // no overflow past max_bytes
    }
  }
  return rows;
}

std::string format_table(const std::vector<CommBenchRow>& rows) {
  std::string out;
  std::string current;
  for (const CommBenchRow& row : rows) {
    if (row.op != current) {
      current = row.op;
      out += fmt::format("# {} on backend {} with {} ranks\n", row.op, row.backend, row.world_size);
      out += fmt::format("#{:>14} {:>8} {:>12} {:>12} {:>12}\n", "size (B)", "iters", "time (us)",
                         "algbw (GB/s)", "busbw (GB/s)");
    }
    out += fmt::format("{:>15} {:>8} {:>12.1f} {:>12.3f} {:>12.3f}\n", row.bytes, row.iterations,
                       row.seconds * 1e6, row.algbw_gbps, row.busbw_gbps);
  }
  return out;
}

std::string format_json_lines(const std::vector<CommBenchRow>& rows) {
  std::string out;
  for (const CommBenchRow& row : rows) {
    nlohmann::json record = {{"backend", row.backend},       {"op", row.op},
                             {"bytes", row.bytes},           {"world_size", row.world_size},
                             {"seconds", row.seconds},       {"algbw_gbps", row.algbw_gbps},
                             {"busbw_gbps", row.busbw_gbps}, {"iterations", row.iterations}};
    out += record.dump() + "\n";
  }
  return out;
}

}  // namespace frugal::bench
