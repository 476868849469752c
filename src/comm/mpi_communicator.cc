// The "mpi" backend. Every operation posts non-blocking MPI collectives and polls them against
// the communicator's deadline, because blocking MPI calls cannot time out.
//
// What MPI can and cannot do on failure, and what this backend does about it:
// - A peer that is slow, stuck or calling a different collective: MPI has no way to tell which
//   peer is missing, and no way to cancel a started collective (MPI_Cancel does not apply to
//   collectives). The operation returns DeadlineExceeded after timeout_ms. The abandoned request
//   stays inside MPI and may still read or write its buffers whenever any MPI call drives the
//   process-wide progress engine, so the whole process stops calling MPI: every MPI communicator
//   then fails fast, and MPI_Finalize is skipped at exit (it could wait forever for the stuck
//   peer). mpirun sees a rank exit without MPI_Finalize and terminates the rest of the job.
// - A peer that dies: mpirun notices the dead process, kills every other rank of the job and
//   reports the dead rank ("mpirun noticed that process rank 1 ... exited on signal 9"). If the
//   transport reports the loss first, the operation returns Unavailable with MPI's message.
#include "comm/mpi_communicator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "comm/backends.h"

namespace frugal::detail {
namespace {

std::string mpi_error_string(int error_code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(error_code, text, &length) != MPI_SUCCESS) {
    return "unknown MPI error " + std::to_string(error_code);
  }
  return std::string(text, static_cast<size_t>(length)) + " (MPI error code " +
         std::to_string(error_code) + ")";
}

std::string_view thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

// f16 and bf16 reductions: MPI has no 16-bit float types, so they travel as MPI_UINT16_T and
// combine through user-defined ops that widen to f32 (the Horovod approach). One op per
// (dtype, reduction) so the callback needs no lookup; kAvg reduces as kSum.
template <DType kDtype, ReduceOp kOp>
void reduce_16bit_floats(void* in, void* in_out, int* length, MPI_Datatype* /*datatype*/) {
  // MPI's contract for user ops: in_out[i] = in[i] op in_out[i].
  reduce_elements(in_out, in, in_out, static_cast<size_t>(*length), kDtype, kOp);
}

constexpr size_t kHalfOpsPerDtype = 3;  // sum (also avg), max, min

size_t half_op_index(DType dtype, ReduceOp op) {
  const size_t dtype_index = dtype == DType::kF16 ? 0 : 1;
  const size_t op_index = op == ReduceOp::kMax ? 1 : op == ReduceOp::kMin ? 2 : 0;
  return dtype_index * kHalfOpsPerDtype + op_index;
}

// Empty spans may carry nullptr, which some MPI paths reject even for zero counts. MPI never
// writes here: every use has a zero count.
std::byte g_empty_buffer[1];
void* non_null(void* data) { return data != nullptr ? data : g_empty_buffer; }
const void* non_null(const void* data) { return data != nullptr ? data : g_empty_buffer; }

}  // namespace

// Everything MPI may still touch until a posted operation completes: its requests, the count and
// displacement arrays (MPI reads them during progress) and derived datatypes. It lives on the
// heap so that an abandoned operation can be leaked whole rather than leave MPI with dangling
// pointers into freed stack frames.
struct MpiInFlight {
  std::vector<MPI_Request> requests;
  std::vector<MPI_Status> statuses;
  std::vector<std::vector<int>> int_arrays;
  std::vector<std::vector<MPI_Datatype>> type_arrays;  // handles only; `datatypes` owns them
  std::vector<MPI_Datatype> datatypes;  // committed; freed once the requests complete
  MPI_Comm new_comm = MPI_COMM_NULL;    // written by MPI_Comm_idup on completion
  std::vector<std::byte> send_copy;     // allreduce's send buffer when not in place

  MpiInFlight() = default;
  MpiInFlight(const MpiInFlight&) = delete;
  MpiInFlight& operator=(const MpiInFlight&) = delete;
  ~MpiInFlight() {
    for (MPI_Datatype& type : datatypes) MPI_Type_free(&type);
  }

  // Returns a stable pointer to a new int array of `n` elements.
  int* new_int_array(size_t n) {
    int_arrays.emplace_back(std::max<size_t>(n, 1), 0);
    return int_arrays.back().data();
  }
  // Returns a stable pointer to a new array of `n` datatype handles, all MPI_BYTE.
  MPI_Datatype* new_type_array(size_t n) {
    type_arrays.emplace_back(std::max<size_t>(n, 1), MPI_BYTE);
    return type_arrays.back().data();
  }
};

// Process-wide MPI state. MPI_Init and MPI_Finalize may each run once per process, MPI's progress
// engine and error state are shared by every communicator, and the user-defined reduction ops
// must be freed before MPI_Finalize. That makes this the one process-global object of the comm
// layer: ARCHITECTURE.md's "no global singletons" yields to MPI's own contract here. Thread-safe.
class MpiRuntime {
 public:
  // Initializes MPI (MPI_THREAD_MULTIPLE) on the first call; later calls return the same result.
  static Result<MpiRuntime*> get() {
    // A function-local static is initialized exactly once even with concurrent callers, and a
    // failed MPI_Init_thread cannot be retried, so its error is kept too.
    static const Result<MpiRuntime*> runtime = initialize();
    return runtime;
  }

  MPI_Op half_op(DType dtype, ReduceOp op) const { return half_ops_[half_op_index(dtype, op)]; }

  bool is_poisoned() const { return poisoned_.load(std::memory_order_acquire); }

  std::string poison_reason() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return poison_reason_;
  }

  // Called after a timeout or an MPI error in flight, with the operation if some of its requests
  // did not complete (never freed: MPI may still use its arrays). From then on the process stops
  // calling MPI: see the top of this file. `reason` is a one-line summary for later errors.
  void abandon(std::unique_ptr<MpiInFlight> flight, const std::string& reason) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (flight != nullptr) abandoned_.push_back(std::move(flight));
    if (!poisoned_.load(std::memory_order_relaxed)) {
      poison_reason_ = reason;
      poisoned_.store(true, std::memory_order_release);
    }
  }

 private:
  MpiRuntime() = default;

  static Result<MpiRuntime*> initialize() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) {
      return failed_precondition(
          "mpi backend: MPI was already finalized in this process and cannot be initialized again");
    }
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = MPI_THREAD_SINGLE;
    const bool initialize_here = !initialized;
    if (initialize_here) {
      const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      if (rc != MPI_SUCCESS) {
        return unavailable("mpi backend: MPI_Init_thread failed: " + mpi_error_string(rc));
      }
      // We own MPI's lifetime in this process: finalize exactly once, after main() returns.
      std::atexit(finalize_at_exit);
      // Errors in calls on MPI_COMM_WORLD itself (MPI_Comm_idup) become return codes too.
      MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    } else {
      MPI_Query_thread(&provided);
    }
    if (provided < MPI_THREAD_MULTIPLE) {
      return failed_precondition(
          "mpi backend: the MPI library provides only " + std::string(thread_level_name(provided)) +
          ", but Frugal needs MPI_THREAD_MULTIPLE (communicators are used from several threads); "
          "use an MPI built with thread support (Debian's OpenMPI has it)" +
          (initialize_here ? "" : ", or initialize MPI with MPI_Init_thread(MPI_THREAD_MULTIPLE)"));
    }

    auto* runtime = new MpiRuntime();  // never deleted: finalize_at_exit uses it after main()
    constexpr std::array<MPI_User_function*, 2 * kHalfOpsPerDtype> kFunctions = {
        reduce_16bit_floats<DType::kF16, ReduceOp::kSum>,
        reduce_16bit_floats<DType::kF16, ReduceOp::kMax>,
        reduce_16bit_floats<DType::kF16, ReduceOp::kMin>,
        reduce_16bit_floats<DType::kBF16, ReduceOp::kSum>,
        reduce_16bit_floats<DType::kBF16, ReduceOp::kMax>,
        reduce_16bit_floats<DType::kBF16, ReduceOp::kMin>,
    };
    for (size_t i = 0; i < kFunctions.size(); ++i) {
      const int rc = MPI_Op_create(kFunctions[i], /*commute=*/1, &runtime->half_ops_[i]);
      if (rc != MPI_SUCCESS) {
        return internal_error("mpi backend: MPI_Op_create for f16/bf16 reductions failed: " +
                              mpi_error_string(rc));
      }
    }
    instance_ = runtime;
    return runtime;
  }

  static void finalize_at_exit() {
    MpiRuntime* runtime = instance_;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    if (runtime != nullptr && runtime->is_poisoned()) {
      std::fprintf(stderr,
                   "frugal: exiting without MPI_Finalize, which could wait forever for a "
                   "missing peer, because %s; mpirun will end the remaining ranks\n",
                   runtime->poison_reason().c_str());
      return;
    }
    if (runtime != nullptr) {
      for (MPI_Op& op : runtime->half_ops_) {
        if (op != MPI_OP_NULL) MPI_Op_free(&op);
      }
    }
    MPI_Finalize();
  }

  static inline MpiRuntime* instance_ = nullptr;

  std::array<MPI_Op, 2 * kHalfOpsPerDtype> half_ops_ = {MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL,
                                                        MPI_OP_NULL, MPI_OP_NULL, MPI_OP_NULL};
  std::atomic<bool> poisoned_{false};
  mutable std::mutex mutex_;  // guards poison_reason_ and abandoned_
  std::string poison_reason_;
  std::vector<std::unique_ptr<MpiInFlight>> abandoned_;
};

namespace {

using Clock = std::chrono::steady_clock;

// Paces the polling of in-flight requests. MPI advances non-blocking collectives only inside MPI
// calls, so polling back to back gives the lowest latency and the best bandwidth; but ranks may
// share cores (mpirun --oversubscribe) and the engine runs compute threads beside this one.
// So: spin for the first kSpinFor, then yield the core between polls (as MPI's own blocking
// wait does when oversubscribed), and once a wait has lasted kYieldFor it is a wait for a slow
// peer, not for bytes: sleep between polls, growing to kMaxSleep.
class PollPacer {
 public:
  explicit PollPacer(Clock::time_point start) : start_(start) {}

  void pause(Clock::time_point now) {
    const auto waited = now - start_;
    if (waited < kSpinFor) return;
    if (waited < kYieldFor) {
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    sleep_ = std::min(sleep_ * 2, kMaxSleep);
  }

 private:
  static constexpr auto kSpinFor = std::chrono::microseconds(50);
  static constexpr auto kYieldFor = std::chrono::milliseconds(20);
  static constexpr auto kMaxSleep = std::chrono::microseconds(100);

  Clock::time_point start_;
  std::chrono::microseconds sleep_{1};
};

enum class WaitOutcome { kCompleted, kFailed, kTimedOut };

struct WaitResult {
  WaitOutcome outcome = WaitOutcome::kCompleted;
  int error_code = MPI_SUCCESS;
};

// Polls every request of `flight` until all complete, one fails, or `timeout` passes.
WaitResult wait_all(MpiInFlight& flight, std::chrono::milliseconds timeout) {
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + timeout;
  PollPacer pacer(start);
  const int count = static_cast<int>(flight.requests.size());
  flight.statuses.resize(flight.requests.size());
  while (true) {
    int done = 0;
    const int rc = MPI_Testall(count, flight.requests.data(), &done, flight.statuses.data());
    if (rc == MPI_ERR_IN_STATUS) {
      for (const MPI_Status& status : flight.statuses) {
        if (status.MPI_ERROR != MPI_SUCCESS && status.MPI_ERROR != MPI_ERR_PENDING) {
          return {WaitOutcome::kFailed, status.MPI_ERROR};
        }
      }
      return {WaitOutcome::kFailed, rc};
    }
    if (rc != MPI_SUCCESS) return {WaitOutcome::kFailed, rc};
    if (done) return {WaitOutcome::kCompleted, MPI_SUCCESS};
    const Clock::time_point now = Clock::now();
    if (now >= deadline) return {WaitOutcome::kTimedOut, MPI_SUCCESS};
    pacer.pause(now);
  }
}

bool all_requests_done(const MpiInFlight& flight) {
  return std::all_of(flight.requests.begin(), flight.requests.end(),
                     [](MPI_Request r) { return r == MPI_REQUEST_NULL; });
}

std::string timeout_message(const std::string& where, std::chrono::milliseconds timeout) {
  return where + " did not complete within " + std::to_string(timeout.count()) +
         " ms (timeout_ms): a peer is slow, stuck, or calling a different collective. MPI "
         "cannot tell which peer is missing; a rank that died is reported by mpirun, which "
         "then ends the job. MPI cannot cancel a started collective, so every MPI operation "
         "of this process now fails fast and MPI_Finalize is skipped at exit";
}

MPI_Datatype mpi_builtin_type(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return MPI_FLOAT;
    case DType::kF64:
      return MPI_DOUBLE;
    case DType::kI32:
      return MPI_INT32_T;
    case DType::kI64:
      return MPI_INT64_T;
    case DType::kU8:
      return MPI_UINT8_T;
    case DType::kF16:
    case DType::kBF16:
      return MPI_UINT16_T;
  }
  return MPI_DATATYPE_NULL;
}

MPI_Op mpi_builtin_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      return MPI_SUM;
    case ReduceOp::kMax:
      return MPI_MAX;
    case ReduceOp::kMin:
      return MPI_MIN;
  }
  return MPI_OP_NULL;
}

// A datatype covering `bytes` bytes that start `offset` bytes after the buffer address, as blocks
// of at most `max_block` bytes so no int overflows (the BigMPI technique). Its lower bound is
// `offset` and its extent `bytes`. Added to `flight`, which frees it after completion.
int make_byte_range_type(MpiInFlight& flight, size_t offset, size_t bytes, size_t max_block,
                         MPI_Datatype* type) {
  const size_t blocks = std::max<size_t>(1, (bytes + max_block - 1) / max_block);
  std::vector<int> lengths(blocks);
  std::vector<MPI_Aint> displacements(blocks);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t start = b * max_block;
    lengths[b] = static_cast<int>(std::min(max_block, bytes - start));
    displacements[b] = static_cast<MPI_Aint>(offset + start);
  }
  int rc = MPI_Type_create_hindexed(static_cast<int>(blocks), lengths.data(), displacements.data(),
                                    MPI_BYTE, type);
  if (rc != MPI_SUCCESS) return rc;
  rc = MPI_Type_commit(type);
  if (rc != MPI_SUCCESS) {
    MPI_Type_free(type);
    return rc;
  }
  flight.datatypes.push_back(*type);
  return MPI_SUCCESS;
}

// Posts an MPI_Ialltoallw exchanging bytes: block r of `send` (send_counts[r] bytes at
// send_displacements[r]) goes to rank r, and block r of `recv` comes from rank r. Each non-empty
// block is one element of a derived datatype, so counts and displacements may exceed int. On an
// error returns its code and names the failing call in `failed_call`.
int post_alltoallw_of_bytes(MpiInFlight& flight, const std::byte* send,
                            std::span<const size_t> send_counts,
                            std::span<const size_t> send_displacements, std::byte* recv,
                            std::span<const size_t> recv_counts,
                            std::span<const size_t> recv_displacements, size_t max_block,
                            MPI_Comm comm, const char** failed_call) {
  const size_t n = send_counts.size();
  int* send_elements = flight.new_int_array(n);
  int* recv_elements = flight.new_int_array(n);
  int* zero_displacements = flight.new_int_array(n);
  MPI_Datatype* send_types = flight.new_type_array(n);
  MPI_Datatype* recv_types = flight.new_type_array(n);
  *failed_call = "MPI_Type_create_hindexed";
  for (size_t r = 0; r < n; ++r) {
    if (send_counts[r] > 0) {
      // allgatherv sends the same block to everyone: reuse the previous peer's type.
      if (r > 0 && send_counts[r - 1] == send_counts[r] &&
          send_displacements[r - 1] == send_displacements[r] && send_elements[r - 1] == 1) {
        send_types[r] = send_types[r - 1];
      } else {
        const int rc = make_byte_range_type(flight, send_displacements[r], send_counts[r],
                                            max_block, &send_types[r]);
        if (rc != MPI_SUCCESS) return rc;
      }
      send_elements[r] = 1;
    }
    if (recv_counts[r] > 0) {
      const int rc = make_byte_range_type(flight, recv_displacements[r], recv_counts[r], max_block,
                                          &recv_types[r]);
      if (rc != MPI_SUCCESS) return rc;
      recv_elements[r] = 1;
    }
  }
  *failed_call = "MPI_Ialltoallw";
  MPI_Request request = MPI_REQUEST_NULL;
  const int rc =
      MPI_Ialltoallw(non_null(send), send_elements, zero_displacements, send_types, non_null(recv),
                     recv_elements, zero_displacements, recv_types, comm, &request);
  if (rc != MPI_SUCCESS) return rc;
  flight.requests.push_back(request);
  return MPI_SUCCESS;
}

// Exclusive prefix sums of byte counts: where each rank's block starts.
std::vector<size_t> displacements_of(std::span<const size_t> counts) {
  std::vector<size_t> displacements(counts.size());
  std::exclusive_scan(counts.begin(), counts.end(), displacements.begin(), size_t{0});
  return displacements;
}

bool fits(std::span<const size_t> values, size_t limit) {
  return std::all_of(values.begin(), values.end(), [limit](size_t v) { return v <= limit; });
}

}  // namespace

MpiCommunicator::MpiCommunicator(MpiRuntime* runtime, MPI_Comm comm,
                                 std::chrono::milliseconds timeout)
    : runtime_(runtime),
      comm_(comm),
      timeout_(timeout),
      max_count_per_call_(static_cast<size_t>(INT_MAX)) {
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &size_);
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // After MPI_Finalize the handle is gone; after an abandoned operation the process must not
  // call MPI again (see the top of this file), so the handle is leaked on purpose.
  if (comm_ == MPI_COMM_NULL || finalized || runtime_->is_poisoned()) return;
  MPI_Comm_free(&comm_);
}

void MpiCommunicator::set_max_count_per_call_for_testing(size_t max_count) {
  max_count_per_call_ = std::clamp<size_t>(max_count, 1, static_cast<size_t>(INT_MAX));
}

std::string MpiCommunicator::where(std::string_view description) const {
  return "mpi " + std::string(description) + " on rank " + std::to_string(rank_) + " of " +
         std::to_string(size_);
}

Status MpiCommunicator::check_usable(std::string_view operation) {
  if (broken_.is_ok() && runtime_->is_poisoned()) {
    broken_ = aborted("MPI is unusable in this process since " + runtime_->poison_reason());
  }
  if (broken_.is_ok()) return Status::ok();
  return failed_precondition(where(operation) +
                             ": the communicator is broken by an earlier error (" +
                             broken_.to_string() + "); create a new job");
}

Status MpiCommunicator::break_with(Status status) {
  if (broken_.is_ok()) broken_ = status;
  return status;
}

template <typename Describe>
Status MpiCommunicator::posting_failed(std::unique_ptr<MpiInFlight> flight,
                                       const Describe& describe, std::string_view mpi_call,
                                       int error_code) {
  const std::string message =
      where(describe()) + ": " + std::string(mpi_call) + " failed: " + mpi_error_string(error_code);
  // Requests posted before the failing call are still outstanding and cannot be cancelled.
  if (!all_requests_done(*flight)) runtime_->abandon(std::move(flight), message);
  return break_with(internal_error(message));
}

template <typename Describe>
Status MpiCommunicator::complete(std::unique_ptr<MpiInFlight>& flight, const Describe& describe) {
  const WaitResult result = wait_all(*flight, timeout_);
  if (result.outcome == WaitOutcome::kCompleted) return Status::ok();
  const std::string description = describe();  // built only on failure: keeps small ops fast
  switch (result.outcome) {
    case WaitOutcome::kCompleted:
      return Status::ok();
    case WaitOutcome::kFailed: {
      // An error in flight leaves MPI's state suspect (a peer or link is gone): stop using MPI
      // in this process, and skip MPI_Finalize, which would wait for the lost peer.
      const std::string error = mpi_error_string(result.error_code);
      if (all_requests_done(*flight)) flight.reset();
      runtime_->abandon(std::move(flight), where(description) + " failed: " + error);
      return break_with(unavailable(where(description) +
                                    ": MPI reported an error while the operation was in flight "
                                    "(a peer may have died or the network failed): " +
                                    error));
    }
    case WaitOutcome::kTimedOut: {
      runtime_->abandon(std::move(flight), where(description) + " timed out after " +
                                               std::to_string(timeout_.count()) + " ms");
      return break_with(deadline_exceeded(timeout_message(where(description), timeout_)));
    }
  }
  return Status::ok();
}

Status MpiCommunicator::allreduce(MutableView buf, ReduceOp op) {
  FRUGAL_RETURN_IF_ERROR(check_usable("allreduce"));
  FRUGAL_RETURN_IF_ERROR(break_with(check_allreduce_args(*this, buf, op)));
  const size_t count = static_cast<size_t>(buf.numel());
  const size_t element_bytes = dtype_size(buf.dtype);
  const bool half = buf.dtype == DType::kF16 || buf.dtype == DType::kBF16;
  const MPI_Datatype type = mpi_builtin_type(buf.dtype);
  const MPI_Op mpi_op = half ? runtime_->half_op(buf.dtype, op) : mpi_builtin_op(op);
  const auto description = [&] {
    return "allreduce of " + std::to_string(count) + " " + std::string(dtype_name(buf.dtype)) +
           " elements (" + std::string(reduce_op_name(op)) + ")";
  };

  auto flight = std::make_unique<MpiInFlight>();
  auto* data = static_cast<std::byte*>(non_null(buf.data));
  // OpenMPI 4's non-blocking collectives (libnbc) reduce along a binomial tree whenever the
  // allreduce is in place, has fewer than 4 ranks or is under 64 KiB. Cost model for N bytes:
  // binomial, reduce then broadcast, 2 * log2(size) * N bytes in sequence through the root;
  // ring, 2 * (size - 1) / size * N bytes per rank. So from 4 ranks on, large buffers are sent
  // from a copy (one memcpy), which lets libnbc choose its ring. On 2-3 ranks,
  // OMPI_MCA_coll_libnbc_iallreduce_algorithm=1 forces the ring for every allreduce (64 MiB on 2
  // ranks sharing memory: 64 ms -> 25 ms), at the price of latency for tiny buffers.
  const size_t total_bytes = count * element_bytes;
  const bool send_from_copy = size_ >= 4 && total_bytes >= 64 * 1024;
  if (send_from_copy) {
    flight->send_copy = std::move(allreduce_send_copy_);  // reused across calls
    if (flight->send_copy.size() < total_bytes) flight->send_copy.resize(total_bytes);
    std::memcpy(flight->send_copy.data(), data, total_bytes);
  }
  size_t offset = 0;
  do {  // at least one call, so that zero-length allreduces still match across ranks
    const size_t chunk = std::min(count - offset, max_count_per_call_);
    const void* send =
        send_from_copy ? flight->send_copy.data() + offset * element_bytes : MPI_IN_PLACE;
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Iallreduce(send, data + offset * element_bytes, static_cast<int>(chunk),
                                  type, mpi_op, comm_, &request);
    if (rc != MPI_SUCCESS) {
      return posting_failed(std::move(flight), description, "MPI_Iallreduce", rc);
    }
    flight->requests.push_back(request);
    offset += chunk;
  } while (offset < count);

  FRUGAL_RETURN_IF_ERROR(complete(flight, description));
  allreduce_send_copy_ = std::move(flight->send_copy);
  if (op == ReduceOp::kAvg) scale_in_place(buf.data, count, buf.dtype, size_);
  return Status::ok();
}

Status MpiCommunicator::allgather(ConstBytes in, MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_usable("allgather"));
  FRUGAL_RETURN_IF_ERROR(break_with(check_allgather_args(*this, in, out)));
  const size_t bytes = in.size();
  const auto description = [&] {
    return "allgather of " + std::to_string(bytes) + " bytes per rank";
  };

  auto flight = std::make_unique<MpiInFlight>();
  // Gathering from our own slot of `out` is MPI_IN_PLACE; any other overlap is the caller's bug.
  const bool in_place = bytes > 0 && in.data() == out.data() + rank_ * bytes;
  const void* send = in_place ? MPI_IN_PLACE : non_null(in.data());
  MPI_Datatype type = MPI_BYTE;
  int count = 1;
  if (bytes <= max_count_per_call_) {
    count = static_cast<int>(bytes);
  } else {
    // One element of a datatype whose extent is `bytes`: MPI places rank r at r * extent.
    const int rc = make_byte_range_type(*flight, 0, bytes, max_count_per_call_, &type);
    if (rc != MPI_SUCCESS) {
      return posting_failed(std::move(flight), description, "MPI_Type_create_hindexed", rc);
    }
  }
  MPI_Request request = MPI_REQUEST_NULL;
  const int rc =
      MPI_Iallgather(send, count, type, non_null(out.data()), count, type, comm_, &request);
  if (rc != MPI_SUCCESS)
    return posting_failed(std::move(flight), description, "MPI_Iallgather", rc);
  flight->requests.push_back(request);
  return complete(flight, description);
}

Status MpiCommunicator::allgatherv(ConstBytes in, std::span<const size_t> counts,
                                   MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_usable("allgatherv"));
  FRUGAL_RETURN_IF_ERROR(break_with(check_allgatherv_args(*this, in, counts, out)));
  const std::vector<size_t> displacements = displacements_of(counts);
  const auto description = [&] {
    return "allgatherv of " + std::to_string(out.size()) + " bytes in total (" +
           std::to_string(in.size()) + " from this rank)";
  };
  auto flight = std::make_unique<MpiInFlight>();
  std::byte* own_slot = out.data() + displacements[rank_];
  const bool in_place = !in.empty() && in.data() == own_slot;
  MPI_Request request = MPI_REQUEST_NULL;

  if (fits(counts, max_count_per_call_) && fits(displacements, max_count_per_call_)) {
    int* int_counts = flight->new_int_array(counts.size());
    int* int_displacements = flight->new_int_array(counts.size());
    for (size_t r = 0; r < counts.size(); ++r) {
      int_counts[r] = static_cast<int>(counts[r]);
      int_displacements[r] = static_cast<int>(displacements[r]);
    }
    const int rc = MPI_Iallgatherv(in_place ? MPI_IN_PLACE : non_null(in.data()),
                                   static_cast<int>(in.size()), MPI_BYTE, non_null(out.data()),
                                   int_counts, int_displacements, MPI_BYTE, comm_, &request);
    if (rc != MPI_SUCCESS) {
      return posting_failed(std::move(flight), description, "MPI_Iallgatherv", rc);
    }
    flight->requests.push_back(request);
    return complete(flight, description);
  }

  // Counts or displacements beyond int: every peer gets our block through an all-to-all whose
  // blocks are derived datatypes at 64-bit displacements. Our own block is copied locally.
  std::vector<size_t> send_counts(counts.size(), in.size());
  std::vector<size_t> send_displacements(counts.size(), 0);
  std::vector<size_t> recv_counts(counts.begin(), counts.end());
  send_counts[rank_] = 0;
  recv_counts[rank_] = 0;
  if (!in.empty() && !in_place) std::memcpy(own_slot, in.data(), in.size());
  const char* failed_call = nullptr;
  const int rc =
      post_alltoallw_of_bytes(*flight, in.data(), send_counts, send_displacements, out.data(),
                              recv_counts, displacements, max_count_per_call_, comm_, &failed_call);
  if (rc != MPI_SUCCESS) return posting_failed(std::move(flight), description, failed_call, rc);
  return complete(flight, description);
}

Status MpiCommunicator::broadcast(MutableBytes buf, int root) {
  FRUGAL_RETURN_IF_ERROR(check_usable("broadcast"));
  FRUGAL_RETURN_IF_ERROR(break_with(check_broadcast_args(*this, root)));
  const auto description = [&] {
    return "broadcast of " + std::to_string(buf.size()) + " bytes from root " +
           std::to_string(root);
  };
  auto flight = std::make_unique<MpiInFlight>();
  auto* data = static_cast<std::byte*>(non_null(buf.data()));
  size_t offset = 0;
  do {  // at least one call, so that zero-length broadcasts still match across ranks
    const size_t chunk = std::min(buf.size() - offset, max_count_per_call_);
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc =
        MPI_Ibcast(data + offset, static_cast<int>(chunk), MPI_BYTE, root, comm_, &request);
    if (rc != MPI_SUCCESS) return posting_failed(std::move(flight), description, "MPI_Ibcast", rc);
    flight->requests.push_back(request);
    offset += chunk;
  } while (offset < buf.size());
  return complete(flight, description);
}

Status MpiCommunicator::alltoallv(ConstBytes in, std::span<const size_t> send_counts,
                                  MutableBytes out, std::span<const size_t> recv_counts) {
  FRUGAL_RETURN_IF_ERROR(check_usable("alltoallv"));
  FRUGAL_RETURN_IF_ERROR(
      break_with(check_alltoallv_args(*this, in, send_counts, out, recv_counts)));
  const auto description = [&] {
    return "alltoallv sending " + std::to_string(in.size()) + " bytes and receiving " +
           std::to_string(out.size()) + " bytes";
  };
  const std::vector<size_t> send_displacements = displacements_of(send_counts);
  const std::vector<size_t> recv_displacements = displacements_of(recv_counts);
  auto flight = std::make_unique<MpiInFlight>();

  if (fits(send_counts, max_count_per_call_) && fits(recv_counts, max_count_per_call_) &&
      fits(send_displacements, max_count_per_call_) &&
      fits(recv_displacements, max_count_per_call_)) {
    const size_t n = send_counts.size();
    int* send_counts_int = flight->new_int_array(n);
    int* send_displacements_int = flight->new_int_array(n);
    int* recv_counts_int = flight->new_int_array(n);
    int* recv_displacements_int = flight->new_int_array(n);
    for (size_t r = 0; r < n; ++r) {
      send_counts_int[r] = static_cast<int>(send_counts[r]);
      send_displacements_int[r] = static_cast<int>(send_displacements[r]);
      recv_counts_int[r] = static_cast<int>(recv_counts[r]);
      recv_displacements_int[r] = static_cast<int>(recv_displacements[r]);
    }
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = MPI_Ialltoallv(non_null(in.data()), send_counts_int, send_displacements_int,
                                  MPI_BYTE, non_null(out.data()), recv_counts_int,
                                  recv_displacements_int, MPI_BYTE, comm_, &request);
    if (rc != MPI_SUCCESS) {
      return posting_failed(std::move(flight), description, "MPI_Ialltoallv", rc);
    }
    flight->requests.push_back(request);
    return complete(flight, description);
  }

  // Counts or displacements beyond int: the same exchange with derived datatypes at 64-bit
  // displacements; the block to ourselves is copied locally.
  std::vector<size_t> send_counts_rest(send_counts.begin(), send_counts.end());
  std::vector<size_t> recv_counts_rest(recv_counts.begin(), recv_counts.end());
  const size_t self_bytes = std::min(send_counts[rank_], recv_counts[rank_]);
  if (self_bytes > 0) {
    std::memmove(out.data() + recv_displacements[rank_], in.data() + send_displacements[rank_],
                 self_bytes);
  }
  send_counts_rest[rank_] = 0;
  recv_counts_rest[rank_] = 0;
  const char* failed_call = nullptr;
  const int rc = post_alltoallw_of_bytes(*flight, in.data(), send_counts_rest, send_displacements,
                                         out.data(), recv_counts_rest, recv_displacements,
                                         max_count_per_call_, comm_, &failed_call);
  if (rc != MPI_SUCCESS) return posting_failed(std::move(flight), description, failed_call, rc);
  return complete(flight, description);
}

Status MpiCommunicator::barrier() {
  FRUGAL_RETURN_IF_ERROR(check_usable("barrier"));
  auto flight = std::make_unique<MpiInFlight>();
  MPI_Request request = MPI_REQUEST_NULL;
  const int rc = MPI_Ibarrier(comm_, &request);
  const auto description = [] { return std::string("barrier"); };
  if (rc != MPI_SUCCESS) return posting_failed(std::move(flight), description, "MPI_Ibarrier", rc);
  flight->requests.push_back(request);
  return complete(flight, description);
}

Result<std::unique_ptr<Communicator>> MpiCommunicator::split(int color, int key) {
  FRUGAL_RETURN_IF_ERROR(check_usable("split"));
  FRUGAL_RETURN_IF_ERROR(break_with(check_split_args(*this, color)));
  const auto description = [&] {
    return "split(color=" + std::to_string(color) + ", key=" + std::to_string(key) + ")";
  };
  // MPI_Comm_split blocks and cannot time out. A timed allgather first proves that every rank
  // has entered split(), after which MPI_Comm_split only exchanges what it needs and returns.
  auto flight = std::make_unique<MpiInFlight>();
  int* mine = flight->new_int_array(2);
  mine[0] = color;
  mine[1] = key;
  int* everyone = flight->new_int_array(2 * static_cast<size_t>(size_));
  MPI_Request request = MPI_REQUEST_NULL;
  int rc = MPI_Iallgather(mine, 2, MPI_INT, everyone, 2, MPI_INT, comm_, &request);
  if (rc != MPI_SUCCESS)
    return posting_failed(std::move(flight), description, "MPI_Iallgather", rc);
  flight->requests.push_back(request);
  FRUGAL_RETURN_IF_ERROR(complete(flight, description));

  MPI_Comm child = MPI_COMM_NULL;
  rc = MPI_Comm_split(comm_, color, key, &child);
  if (rc != MPI_SUCCESS) {
    return break_with(
        internal_error(where(description()) + ": MPI_Comm_split failed: " + mpi_error_string(rc)));
  }
  auto result = std::make_unique<MpiCommunicator>(runtime_, child, timeout_);
  result->max_count_per_call_ = max_count_per_call_;
  return std::unique_ptr<Communicator>(std::move(result));
}

// Waits for MPI_Comm_idup, which unlike MPI_Comm_dup honours the timeout.
Result<std::unique_ptr<Communicator>> make_mpi_communicator(const CommConfig& config) {
  if (config.timeout_ms <= 0) {
    return invalid_argument("mpi backend: timeout_ms must be positive, got " +
                            std::to_string(config.timeout_ms));
  }
  FRUGAL_ASSIGN_OR_RETURN(MpiRuntime * runtime, MpiRuntime::get());
  if (runtime->is_poisoned()) {
    return failed_precondition(
        "mpi backend: cannot create a communicator: an earlier MPI operation of this process was "
        "abandoned (" +
        runtime->poison_reason() + ")");
  }
  const std::chrono::milliseconds timeout(config.timeout_ms);
  auto flight = std::make_unique<MpiInFlight>();
  MPI_Request request = MPI_REQUEST_NULL;
  int rc = MPI_Comm_idup(MPI_COMM_WORLD, &flight->new_comm, &request);
  if (rc != MPI_SUCCESS) {
    return unavailable("mpi backend: MPI_Comm_idup(MPI_COMM_WORLD) failed: " +
                       mpi_error_string(rc));
  }
  flight->requests.push_back(request);
  const WaitResult result = wait_all(*flight, timeout);
  if (result.outcome != WaitOutcome::kCompleted) {
    int world_rank = 0;
    int world_size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    const std::string where =
        "mpi communicator creation (MPI_Comm_idup of MPI_COMM_WORLD) on rank " +
        std::to_string(world_rank) + " of " + std::to_string(world_size);
    if (result.outcome == WaitOutcome::kTimedOut) {
      runtime->abandon(std::move(flight),
                       where + " timed out after " + std::to_string(timeout.count()) + " ms");
      return deadline_exceeded(timeout_message(where, timeout));
    }
    const std::string message = where + " failed: " + mpi_error_string(result.error_code);
    if (all_requests_done(*flight)) flight.reset();
    runtime->abandon(std::move(flight), message);
    return unavailable(message);
  }
  return std::unique_ptr<Communicator>(
      std::make_unique<MpiCommunicator>(runtime, flight->new_comm, timeout));
}

bool mpi_backend_built() { return true; }

}  // namespace frugal::detail
