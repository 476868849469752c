#include "engine/bucket_exchange.h"

#include <string>

#include "core/clock.h"

namespace frugal {
namespace {

class DenseAllreduceExchange final : public BucketExchange {
 public:
  explicit DenseAllreduceExchange(Communicator& comm) : comm_(comm) {}

  Status exchange(const Bucket& bucket, MutableView fused, ExchangeCounters& counters) override {
    const int64_t start_us = now_us();
    Status status = comm_.allreduce(fused, ReduceOp::kSum);
    counters.comm_us += now_us() - start_us;
    if (!status.is_ok()) {
      return status.with_context("allreduce of bucket " + std::to_string(bucket.index) + " (" +
                                 std::to_string(bucket.tensors.size()) + " tensors, " +
                                 std::to_string(bucket.bytes) + " bytes) on rank " +
                                 std::to_string(comm_.rank()));
    }
    const int64_t wire =
        ring_allreduce_bytes_per_rank(static_cast<int64_t>(bucket.bytes), comm_.size());
    counters.bytes_sent += wire;
    counters.bytes_received += wire;
    return Status::ok();
  }

 private:
  Communicator& comm_;
};

}  // namespace

std::unique_ptr<BucketExchange> make_dense_allreduce_exchange(Communicator& comm) {
  return std::make_unique<DenseAllreduceExchange>(comm);
}

int64_t ring_allreduce_bytes_per_rank(int64_t bytes, int world_size) {
  if (world_size <= 1) return 0;
  return 2 * (world_size - 1) * bytes / world_size;
}

}  // namespace frugal
