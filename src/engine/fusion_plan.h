// Fusion planners: which tensors share a collective, which are compressed and how, from
// --fusion and an online-profiled cost model. Pure functions and plain structs; thread-safe.
//
//   none      one bucket per tensor, sent as soon as it is ready (WFBP);
//   bytes:MB  Horovod: consecutive tensors fused up to MB, then the fused buffer compressed as a
//             whole (fuse-then-compress, meant for summable payloads such as fp16);
//   omgs      sparsify-behind (OMGS-SGD): dense gradients fused into buffers, one compression
//             over each buffer; buffers sized by the cost model. Small tensors can lose every
//             element to larger neighbours ("tensor missing"), which the engine counts;
//   safusion  sparsify-ahead (SAFusion): every tensor compressed alone the moment it is ready,
//             the payloads fused into buffers holding the same tensors on every rank, buffer
//             boundaries from the cost model; tensors under a size cut-off go dense (allreduce);
//   ssfusion  selective (SSFusion): per tensor, sparsify ahead only when the cost model says it
//             pays (compression time against bytes saved), dense allreduce for the rest; each
//             bucket's allreduce and allgather run back to back, interleaved along backward.
//
// The cost model follows the pipeline SAFusion's sizing rules reason about: a compression thread
// works through the tensors in backward order (tensor t done at max(ready_t, done_{t-1}) +
// compress_t), and one communication thread sends buckets in order (bucket b ends at
// max(ready_b, end_{b-1}) + comm_b, with comm = latency + bytes x per-byte cost per collective).
// SAFusion grows a buffer while the previous buffer's communication hides this buffer's backward
// and compression (T_cm^{i-1} >= T_cp^i + T_b^i) and merges a long tail; we minimise the modelled
// end of the last bucket exactly over all consecutive partitions (dynamic programming, O(L^2)),
// which satisfies those rules wherever they are optimal and never loses to them under the model.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/bucket.h"

namespace frugal {

enum class FusionKind { kNone, kBytes, kOmgs, kSafusion, kSsfusion };

struct FusionSpec {
  FusionKind kind = FusionKind::kBytes;
  size_t bytes = size_t{25} << 20;  // kBytes: the fusion threshold
};

// "none", "bytes:MB" (MB > 0, fractional allowed), "omgs", "safusion", "ssfusion".
Result<FusionSpec> parse_fusion(std::string_view text);
std::string fusion_to_string(const FusionSpec& spec);
// True for the planners that size buckets from the profiled cost model.
bool uses_cost_model(FusionKind kind);

// What one collective costs: latency + bytes x per-byte time.
struct LinkModel {
  double latency_us = 0;             // per collective
  double allreduce_us_per_byte = 0;  // per byte of the reduced buffer
  double allgather_us_per_byte = 0;  // per byte of the gathered output (all ranks' blocks)
};

// One tensor as the profiler saw it (maxima over ranks).
struct TensorProfile {
  size_t bytes = 0;          // dense f32 bytes
  double ready_us = 0;       // when its gradient arrived, from begin_step
  double compress_us = 0;    // compressing it alone
  double payload_bytes = 0;  // its compressed size
  double decompress_us = 0;  // decoding one rank's payload of it
  // Its own exchange's time inside collectives while it was profiled alone (fastest rank: the
  // others also waited for the slowest to arrive). Calibrates the link's latency.
  double comm_us = 0;
};

struct PlanRequest {
  FusionKind kind = FusionKind::kSafusion;
  std::vector<TensorProfile> tensors;  // by id, in backward order
  std::vector<bool> compressed;        // by id: sparsified (else dense, allreduced)
  LinkModel link;
  int world_size = 1;
  bool size_exchange = false;  // variable-size payloads: one more collective per gather
  // Gather compressors: a bucket's dense tensors may ride in its allgather (see
  // Bucket::dense_rides_gather); the model then costs each hybrid bucket the cheaper way.
  bool dense_can_ride = false;
};

struct Plan {
  std::vector<Bucket> buckets;
  double predicted_us = 0;  // the model's end of the last bucket, from begin_step
};

// Consecutive buckets minimising the modelled end of communication (kOmgs: each bucket's
// compressed tensors fused and compressed together; otherwise each compressed alone).
Plan plan_by_cost_model(const PlanRequest& request);

// The modelled end of communication for a given bucket plan (same model as above; a hybrid
// bucket is costed the cheaper way, as the planners mark it).
double simulate_plan(const PlanRequest& request, const std::vector<Bucket>& buckets);

// The hybrid cut-offs. Marginal cost of sending tensor t dense: bytes x allreduce cost; sparse:
// its compression + n x (payload x allgather cost + decompression).
//   by_size (safusion): one size threshold, the one minimising the summed marginal costs when
//     every tensor under it goes dense; returns the per-tensor choice;
//   per tensor (ssfusion): each tensor sparsified only when its sparse cost is lower.
std::vector<bool> choose_compressed_by_size(const std::vector<TensorProfile>& tensors,
                                            const LinkModel& link, int world_size,
                                            size_t* cutoff_bytes = nullptr);
std::vector<bool> choose_compressed_per_tensor(const std::vector<TensorProfile>& tensors,
                                               const LinkModel& link, int world_size);

// Marks each slot compressed per `compressed` (by tensor id); `fused` sets compress_fused on
// every bucket holding a compressed tensor.
void mark_compression(std::vector<Bucket>& buckets, const std::vector<bool>& compressed,
                      bool fused);

}  // namespace frugal
