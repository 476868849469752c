// MpiCommunicator: the "mpi" backend of Communicator, built on OpenMPI's non-blocking collectives
// polled against the communicator's deadline. Created by detail::make_mpi_communicator() or
// split(); the caller owns it. Thread-compatible like every Communicator: one thread at a time
// per instance, distinct instances concurrently (MPI runs with MPI_THREAD_MULTIPLE).
//
// Failure behaviour (details at the top of mpi_communicator.cc):
// - A timeout returns DeadlineExceeded. MPI cannot cancel a started collective, and its progress
//   engine is shared by the whole process, so from then on every MPI communicator of the process
//   fails fast and MPI_Finalize is skipped at exit; mpirun then ends the remaining ranks.
// - A rank that dies is detected by mpirun, which terminates the whole job and names the rank.
#pragma once

// Only MPI's C API is used; without these, OpenMPI's mpi.h drags in its deprecated C++ bindings,
// which need libmpi_cxx at link time.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "comm/communicator.h"

namespace frugal::detail {

class MpiRuntime;
struct MpiInFlight;

class MpiCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm` (freed by the destructor) and sets MPI_ERRORS_RETURN on it.
  // REQUIRES: MPI is initialized through `runtime`; `comm` is an intra-communicator.
  MpiCommunicator(MpiRuntime* runtime, MPI_Comm comm, std::chrono::milliseconds timeout);
  ~MpiCommunicator() override;

  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view backend() const override { return "mpi"; }
  std::chrono::milliseconds timeout() const override { return timeout_; }

  Status allreduce(MutableView buf, ReduceOp op) override;
  Status allgather(ConstBytes in, MutableBytes out) override;
  Status allgatherv(ConstBytes in, std::span<const size_t> counts, MutableBytes out) override;
  Status broadcast(MutableBytes buf, int root) override;
  Status alltoallv(ConstBytes in, std::span<const size_t> send_counts, MutableBytes out,
                   std::span<const size_t> recv_counts) override;
  Status barrier() override;
  Result<std::unique_ptr<Communicator>> split(int color, int key) override;

  // MPI counts are `int`. Larger transfers are split into several calls (allreduce, broadcast)
  // or described by derived datatypes (allgather, allgatherv, alltoallv) so that no count
  // exceeds this limit: elements for allreduce, bytes otherwise. Default INT_MAX. Tests lower it
  // to run the > 2 GiB code paths on small buffers; split() children inherit it.
  void set_max_count_per_call_for_testing(size_t max_count);

 private:
  // Fails fast (FailedPrecondition) if this communicator or the process's MPI state is broken.
  Status check_usable(std::string_view operation);
  // Records `status` as the reason this communicator is broken and returns it.
  Status break_with(Status status);
  // Polls every request of `flight` until all complete or the deadline passes. On an error
  // or timeout the communicator is broken; unfinished requests are handed to the runtime.
  // `describe()` returns the operation's description for error messages (e.g. "allreduce of 8
  // f32 elements (sum)"). Defined and instantiated in mpi_communicator.cc only.
  // On success `flight` is left to the caller; otherwise it may have been moved to the runtime.
  template <typename Describe>
  Status complete(std::unique_ptr<MpiInFlight>& flight, const Describe& describe);
  // Error for an MPI call that failed while posting an operation.
  template <typename Describe>
  Status posting_failed(std::unique_ptr<MpiInFlight> flight, const Describe& describe,
                        std::string_view mpi_call, int error_code);
  std::string where(std::string_view description) const;

  MpiRuntime* runtime_;  // process-wide, outlives every communicator
  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::chrono::milliseconds timeout_;
  size_t max_count_per_call_;
  Status broken_;  // OK while usable
  // allreduce's send buffer for large buffers (see allreduce); kept to avoid reallocating.
  std::vector<std::byte> allreduce_send_copy_;
};

}  // namespace frugal::detail
