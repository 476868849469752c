// The compressed exchange of one bucket: the collective that each Aggregation kind needs, then
// every rank's contribution decoded into the gradients and averaged. Payloads are compressed
// beforehand (by the Synchronizer's compression thread, as soon as each gradient is ready); this
// module only moves and decodes them, on the communication thread.
//
//   kGather    fixed-size payloads (ADTopk): one allgather, no size exchange;
//              variable sizes: allgather of each rank's byte count, then allgatherv of
//              [u32 size per unit][payloads]; decompress_gathered of every unit's n payloads.
//   kSum       allreduce of the concatenated payloads as payload_dtype, round after round
//              (PowerSGD's P then Q through next_round); decompress_accumulate the reduced one.
//   kTwoPhase  alltoallv sends chunk c of every unit to rank c; rank c reduce_chunk()s the world's
//              payloads of its chunk; allgatherv of the reduced chunks; decompress_accumulate.
//
// Several units per bucket share each collective (sparsify-ahead fusion), so a bucket costs one
// or two collectives whatever its tensor count. A gather can also carry the bucket's dense
// tensors ("riding"): each rank appends its f32 values to its block and every rank sums the n
// blocks' copies in rank order, so the bucket needs no allreduce of its own. Not thread-safe; one
// instance per Synchronizer.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "comm/communicator.h"
#include "compress/compressor.h"
#include "core/status.h"
#include "core/tensor_view.h"
#include "core/timeline.h"
#include "engine/bucket_exchange.h"

namespace frugal {

// One compressed tensor (or fused buffer) of a bucket.
struct CompressedUnit {
  TensorId unit = 0;   // the compressor's id
  ConstBytes payload;  // this rank's payload, as compress() returned it
  MutableView target;  // f32; overwritten with the decoded payloads' sum over ranks / divisor
};

class CompressedExchange {
 public:
  // None is owned; all must outlive the exchange. Decoding is recorded as DECOMPRESS events on
  // `lane` of `timeline` (nullptr: not recorded).
  CompressedExchange(Communicator& comm, Compressor& compressor, Timeline* timeline = nullptr,
                     int lane = 0);

  // Exchanges `units` (the same units in the same order on every rank) and writes into each
  // target the sum over ranks divided by `divisor` (the world size for the average, 1 for the
  // sum; divide_floats's rounding). Adds bytes on the wire (per the collectives' ring cost
  // model), communication and decompression time to `counters`. `riding_dense` (f32, same size
  // on every rank; kGather only, else empty) is overwritten likewise with its sum over ranks /
  // divisor, exchanged inside the gather.
  Status exchange(std::span<const CompressedUnit> units, const StepInfo& step,
                  ExchangeCounters& counters, float divisor, MutableView riding_dense = {});

 private:
  Status gather(std::span<const CompressedUnit> units, float divisor, MutableView riding_dense,
                ExchangeCounters& counters);
  Status sum(std::span<const CompressedUnit> units, const StepInfo& step, float divisor,
             ExchangeCounters& counters);
  Status two_phase(std::span<const CompressedUnit> units, const StepInfo& step, float divisor,
                   ExchangeCounters& counters);
  // Runs a collective, timing it into counters.comm_us and naming it in errors.
  template <typename Collective>
  Status timed(const char* what, ExchangeCounters& counters, Collective&& collective);

  Communicator& comm_;
  Compressor& compressor_;
  Timeline* timeline_;
  int lane_;
  // Scratch reused across buckets and steps (grown, never shrunk).
  std::vector<std::byte> send_;
  std::vector<std::byte> recv_;
  std::vector<std::byte> extra_;
};

// Tensors of a fused (sparsify-behind) buffer that this rank's sparse payload selects no element
// of: the "tensor missing" of SAFusion's analysis. `bounds` are [begin, end) element ranges of the
// tensors inside the fused buffer, ascending. Returns 0 for payloads that are not in the sparse
// format (value_dtype empty).
Result<int> count_missing_tensors(ConstBytes payload, std::optional<DType> value_dtype,
                                  int64_t fused_numel, std::span<const int64_t> bounds_begin,
                                  std::span<const int64_t> bounds_end);

}  // namespace frugal
