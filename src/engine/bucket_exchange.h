// BucketExchange: the "combine one bucket across ranks" step of the Synchronizer, kept behind an
// interface so that compressed exchanges (issue 5: compress, allgather or allreduce the payloads,
// decompress-accumulate) replace the dense allreduce without touching the Synchronizer.
// An exchange is owned by one Synchronizer and called from its communication thread only.
#pragma once

#include <cstdint>
#include <memory>

#include "comm/communicator.h"
#include "core/tensor_view.h"
#include "engine/bucket.h"

namespace frugal {

// What one exchange adds to the step's counters.
struct ExchangeCounters {
  int64_t bytes_sent = 0;      // by this rank, per the collective's cost model
  int64_t bytes_received = 0;  // by this rank, per the collective's cost model
  int64_t compress_us = 0;     // compress + decompress time; 0 for dense
  int64_t comm_us = 0;         // time inside collectives
};

class BucketExchange {
 public:
  virtual ~BucketExchange() = default;

  // Replaces `fused` (this rank's f32 gradients of `bucket`, packed as bucket.tensors says) by
  // the elementwise sum over all ranks; the Synchronizer averages afterwards. Every rank calls it
  // for the same buckets in the same order. Adds what it did to `counters`.
  virtual Status exchange(const Bucket& bucket, MutableView fused, ExchangeCounters& counters) = 0;
};

// The dense path: one allreduce(sum) of the whole bucket. Cost model (ring allreduce, n ranks,
// S bytes): each rank sends and receives 2(n-1)/n * S bytes, the figure the counters report
// whatever algorithm the backend picks, so runs are comparable across backends.
// `comm` is not owned and must outlive the exchange.
std::unique_ptr<BucketExchange> make_dense_allreduce_exchange(Communicator& comm);

// 2(n-1)/n * bytes, rounded down: the bytes each rank sends (and receives) in a ring allreduce.
int64_t ring_allreduce_bytes_per_rank(int64_t bytes, int world_size);

}  // namespace frugal
