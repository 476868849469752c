#include "comm/communicator.h"

#include <numeric>
#include <string>

namespace frugal {
namespace {

std::string where(const Communicator& comm, std::string_view op) {
  return std::string(op) + " on rank " + std::to_string(comm.rank()) + " of " +
         std::to_string(comm.size());
}

size_t sum(std::span<const size_t> counts) {
  return std::accumulate(counts.begin(), counts.end(), size_t{0});
}

}  // namespace

std::string_view reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

Status check_allreduce_args(const Communicator& comm, const MutableView& buf, ReduceOp op) {
  if (buf.data == nullptr && buf.numel() > 0) {
    return invalid_argument(where(comm, "allreduce") + ": null buffer with " +
                            std::to_string(buf.numel()) + " elements");
  }
  if (op == ReduceOp::kAvg && !is_floating(buf.dtype)) {
    return invalid_argument(where(comm, "allreduce") + ": avg needs a floating dtype, got " +
                            std::string(dtype_name(buf.dtype)) + "; use sum for integers");
  }
  return Status::ok();
}

Status check_allgather_args(const Communicator& comm, ConstBytes in, MutableBytes out) {
  if (out.size() != in.size() * static_cast<size_t>(comm.size())) {
    return invalid_argument(where(comm, "allgather") + ": output has " +
                            std::to_string(out.size()) + " bytes, expected size x input = " +
                            std::to_string(comm.size()) + " x " + std::to_string(in.size()));
  }
  return Status::ok();
}

Status check_allgatherv_args(const Communicator& comm, ConstBytes in,
                             std::span<const size_t> counts, MutableBytes out) {
  if (counts.size() != static_cast<size_t>(comm.size())) {
    return invalid_argument(where(comm, "allgatherv") + ": " + std::to_string(counts.size()) +
                            " counts given, expected one per rank (" + std::to_string(comm.size()) +
                            ")");
  }
  if (in.size() != counts[comm.rank()]) {
    return invalid_argument(where(comm, "allgatherv") + ": input has " + std::to_string(in.size()) +
                            " bytes but counts[" + std::to_string(comm.rank()) +
                            "] = " + std::to_string(counts[comm.rank()]));
  }
  if (out.size() != sum(counts)) {
    return invalid_argument(where(comm, "allgatherv") + ": output has " +
                            std::to_string(out.size()) +
                            " bytes, expected sum(counts) = " + std::to_string(sum(counts)));
  }
  return Status::ok();
}

Status check_broadcast_args(const Communicator& comm, int root) {
  if (root < 0 || root >= comm.size()) {
    return invalid_argument(where(comm, "broadcast") + ": root " + std::to_string(root) +
                            " is not a rank; valid: 0.." + std::to_string(comm.size() - 1));
  }
  return Status::ok();
}

Status check_alltoallv_args(const Communicator& comm, ConstBytes in,
                            std::span<const size_t> send_counts, MutableBytes out,
                            std::span<const size_t> recv_counts) {
  const size_t n = static_cast<size_t>(comm.size());
  if (send_counts.size() != n || recv_counts.size() != n) {
    return invalid_argument(where(comm, "alltoallv") + ": " + std::to_string(send_counts.size()) +
                            " send counts and " + std::to_string(recv_counts.size()) +
                            " receive counts given, expected " + std::to_string(n) + " of each");
  }
  if (in.size() != sum(send_counts) || out.size() != sum(recv_counts)) {
    return invalid_argument(
        where(comm, "alltoallv") + ": buffers of " + std::to_string(in.size()) + " / " +
        std::to_string(out.size()) + " bytes do not match the count sums " +
        std::to_string(sum(send_counts)) + " / " + std::to_string(sum(recv_counts)));
  }
  return Status::ok();
}

Status check_split_args(const Communicator& comm, int color) {
  if (color < 0) {
    return invalid_argument(where(comm, "split") + ": color " + std::to_string(color) +
                            " is negative; colors must be >= 0");
  }
  return Status::ok();
}

}  // namespace frugal
