// Communicator: the one interface through which Frugal moves bytes between ranks. Backends:
// "local" (ranks are threads of one process), "gloo" (TCP via Debian's libgloo) and "mpi"
// (OpenMPI), chosen at run time by name through make_communicator() (comm/factory.h).
//
// Thread-safety: every operation is collective: all ranks of the communicator call the same
// operations in the same order. One Communicator is used by one thread at a time; distinct
// Communicators (e.g. the results of split()) may be used concurrently from different threads.
//
// Failure contract: every operation completes within the communicator's timeout or returns an
// error (never hangs); when a peer died or left, the error names that peer's rank where the
// backend can tell. After an error the communicator is broken: every later call fails fast.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal {

enum class ReduceOp {
  kSum,
  kAvg,  // sum divided by size(); floating dtypes only
  kMax,
  kMin,
};
std::string_view reduce_op_name(ReduceOp op);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string_view backend() const = 0;
  virtual std::chrono::milliseconds timeout() const = 0;

  // In-place reduction of `buf` across ranks. Every rank passes the same dtype and element count.
  // f16 and bf16 are reduced with f32 arithmetic; each rank's contribution is added in f32 and
  // rounded back to 16 bits once per reduction step of the backend's algorithm (at most size()-1
  // roundings), so the result is within (size()-1) * 2^-11 (f16) or 2^-8 (bf16) relative to the
  // sum of magnitudes of the contributions.
  virtual Status allreduce(MutableView buf, ReduceOp op) = 0;

  // Concatenates every rank's `in` in rank order into `out`.
  // REQUIRES: all ranks pass the same in.size(); out.size() == size() * in.size().
  virtual Status allgather(ConstBytes in, MutableBytes out) = 0;

  // Variable-size allgather: rank r contributes counts[r] bytes (zero allowed); `out` receives
  // them in rank order. REQUIRES: identical `counts` on every rank; in.size() == counts[rank()];
  // out.size() == sum(counts).
  virtual Status allgatherv(ConstBytes in, std::span<const size_t> counts, MutableBytes out) = 0;

  // Copies root's `buf` into every rank's `buf`. REQUIRES: the same buf.size() on every rank.
  virtual Status broadcast(MutableBytes buf, int root) = 0;

  // Personalized all-to-all: `in` holds send_counts[j] bytes for each rank j, in rank order;
  // `out` receives recv_counts[j] bytes from each rank j, in rank order. REQUIRES:
  // send_counts[j] on rank i == recv_counts[i] on rank j; sizes of in/out equal the sums.
  virtual Status alltoallv(ConstBytes in, std::span<const size_t> send_counts, MutableBytes out,
                           std::span<const size_t> recv_counts) = 0;

  virtual Status barrier() = 0;

  // Collective: partitions the ranks by `color` (>= 0) into independent communicators, ordered
  // by (key, old rank) within each color. Operations on the new communicators do not interfere
  // with this one or with each other.
  virtual Result<std::unique_ptr<Communicator>> split(int color, int key) = 0;
};

// Validation shared by all backends: checks the local preconditions of each operation and
// returns InvalidArgument naming the operation, the rank and what was expected.
Status check_allreduce_args(const Communicator& comm, const MutableView& buf, ReduceOp op);
Status check_allgather_args(const Communicator& comm, ConstBytes in, MutableBytes out);
Status check_allgatherv_args(const Communicator& comm, ConstBytes in,
                             std::span<const size_t> counts, MutableBytes out);
Status check_broadcast_args(const Communicator& comm, int root);
Status check_alltoallv_args(const Communicator& comm, ConstBytes in,
                            std::span<const size_t> send_counts, MutableBytes out,
                            std::span<const size_t> recv_counts);
Status check_split_args(const Communicator& comm, int color);

// The reduction kernel of every backend: out[i] = op(a[i], b[i]) for `count` elements of `dtype`
// (f16/bf16 through f32). `out` may alias `a` or `b`. kAvg reduces as kSum; the caller divides
// at the end with scale_in_place.
void reduce_elements(void* out, const void* a, const void* b, size_t count, DType dtype,
                     ReduceOp op);
// buf[i] /= divisor for floating dtypes (used to finish kAvg).
void scale_in_place(void* buf, size_t count, DType dtype, double divisor);

}  // namespace frugal
