// The Compressor contract: how a gradient becomes a payload on the wire, how payloads from every
// rank combine, and how they become gradient again. One Compressor object serves every tensor of a
// job; tensors are registered once, in the same order on every rank, and their state (residuals,
// momenta, thresholds, PowerSGD's Q) is keyed by the tensor's stable name so it survives
// re-bucketing, fusion changes and restarts (export_state / import_state).
//
// Thread-safety: calls for different tensors may run concurrently (the engine compresses tensors
// on a thread pool); calls for one tensor must be serialized by the caller. register_tensor,
// export_state and import_state must not run concurrently with anything else.
//
// Gradients are f32. Every payload is a plain byte string that a compressor can decode without
// alignment assumptions, so the engine may pack payloads back to back in fusion buffers.
//
// Non-finite values (the one policy): compress() fails with InvalidArgument naming the tensor
// when a value it would encode is NaN or Inf. Detection is folded into each compressor's own
// pass; a NaN that a sampler leaves behind in a residual is reported when it is finally sent.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal {

class ThreadPool;

// How payloads from the ranks combine. The engine (issue 5) runs the collective; compress/ never
// communicates. In every case the sum over ranks of what decompress_accumulate adds approximates
// the sum of the ranks' gradients; the engine then divides by the world size.
enum class Aggregation {
  // allreduce(sum) the payload as an array of payload_dtype() (fp16, random-k with a shared seed,
  // PowerSGD's P and Q), then decompress_accumulate the reduced payload once.
  kSum,
  // allgather(v) the payloads, then decompress_accumulate each rank's payload (top-k, threshold
  // methods, ADTopk, QSGD, TernGrad).
  kGather,
  // DeepSpeed's compressed allreduce (1-bit, signSGD): compress() writes one payload per rank-owned
  // chunk; alltoall; the owner of chunk c runs reduce_chunk() over the world_size payloads of c
  // (with server-side error feedback); allgather; decompress_accumulate the chunks back to back.
  kTwoPhase,
};
std::string_view aggregation_name(Aggregation aggregation);

// What a job tells its compressors once, at construction.
struct CompressorContext {
  int world_size = 1;
  uint64_t seed = 0;  // the job seed, identical on every rank
  // Optional pool for large tensors; nullptr runs every kernel on the calling thread. Not owned.
  ThreadPool* pool = nullptr;
};

struct TensorInfo {
  std::string name;  // stable across runs and ranks, e.g. "layer1.0.conv1.weight"
  Shape shape;
};

// Index of a registered tensor: 0, 1, 2, ... in registration order.
using TensorId = int32_t;

struct StepInfo {
  int64_t step = 0;         // global step, identical on every rank
  int64_t total_steps = 0;  // planned length of training; 0 when unknown
};

// One piece of a compressor's saved state, e.g. key "fc1.weight:ef.residual".
struct StateTensor {
  DType dtype = DType::kF32;
  Shape shape;
  std::vector<std::byte> data;
};
using StateDict = std::map<std::string, StateTensor>;

// Counters a compressor keeps about itself (reported in metrics; never needed for correctness).
struct CompressorStats {
  int64_t residual_bytes = 0;        // memory held by error-feedback residuals and momenta
  int64_t residual_bytes_saved = 0;  // what a memory policy (ResiReduce) saves against plain EF
};

class Compressor {
 public:
  virtual ~Compressor() = default;

  // Canonical spec string with every parameter spelled out, e.g. "ef(topk:density=0.01)".
  virtual std::string spec() const = 0;
  virtual Aggregation aggregation() const = 0;
  // kSum only: the element type of the payload, which the allreduce sums.
  virtual DType payload_dtype() const { return DType::kU8; }

  // Registers the next tensor. Fails on an empty or duplicate name, or a shape the compressor
  // cannot handle.
  virtual Result<TensorId> register_tensor(const TensorInfo& info) = 0;
  virtual const TensorInfo& tensor(TensorId id) const = 0;
  virtual int num_tensors() const = 0;

  // An upper bound on compress()'s output for tensor `id` (and, for kSum, on every round's
  // payload), so every buffer can be preallocated.
  virtual size_t max_compressed_bytes(TensorId id) const = 0;
  // True when compress() always returns max_compressed_bytes(id): ranks then need no size
  // exchange (plain allgather instead of allgatherv).
  virtual bool fixed_size() const = 0;

  // Encodes `grad` (f32, the registered shape) into `out` and returns the bytes used. May update
  // the tensor's state (residual, momentum, threshold). Deterministic: the same state, input, seed
  // and step give the same bytes on every rank and every run. REQUIRES: out.size() >=
  // max_compressed_bytes(id).
  virtual Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                                  const StepInfo& step) = 0;

  // Adds the gradient that `payload` encodes into `accum` (f32, the registered shape) without a
  // dense temporary. `payload` is one rank's payload (kGather), the reduced payload (kSum, after
  // the last round) or the world_size reduced chunks back to back (kTwoPhase). Rejects a payload
  // whose size or contents do not fit the tensor (indices out of range) with DataLoss.
  virtual Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) = 0;

  // kGather: decodes every rank's payload for `id` into `target` (f32, the registered shape),
  // overwriting it, and divides by `divisor` (as divide_floats does): target = (0 + d_0 + d_1 +
  // ... in rank order) / divisor, where d_r decodes payloads[r]. Bit for bit what zeroing
  // target, decompress_accumulate of each payload in order and a division give, which is the
  // default. Compressors whose payloads touch few elements override it with one pass over
  // target, a cache-sized block at a time, instead of three. Errors as decompress_accumulate
  // (target is then unspecified).
  virtual Status decompress_gathered(TensorId id, std::span<const ConstBytes> payloads,
                                     MutableView target, float divisor);

  // Subtracts what this rank's own `payload` (just returned by compress) encodes from `target`:
  // error feedback's residual = compensated - decompress(compress(compensated)). The default
  // negates `target`, accumulates and negates again (exact); sparse compressors override it.
  virtual Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target);

  // Set when payloads use the shared sparse format of sparse_payload.h with values of this type;
  // memories such as DGC's momentum correction then read the selected indices from it.
  virtual std::optional<DType> sparse_value_dtype() const { return std::nullopt; }

  // kSum only: how many allreduce rounds one exchange takes (PowerSGD: 2, P then Q).
  virtual int rounds() const { return 1; }
  // kSum only, for rounds() > 1: consumes the reduced payload of `round` (0-based) and writes the
  // payload of round + 1 into `out`, returning its size.
  virtual Result<size_t> next_round(TensorId id, int round, ConstBytes reduced, MutableBytes out,
                                    const StepInfo& step);

  // kTwoPhase only: the fixed payload size of a chunk of `chunk_numel` elements. compress()
  // writes the chunks of chunk_bounds(numel, world_size) back to back.
  virtual size_t chunk_payload_bytes(int64_t chunk_numel) const;
  // kTwoPhase only: on the rank that owns chunk `chunk`, combines the world_size payloads of that
  // chunk (in rank order) into one payload of the same size in `out`.
  virtual Status reduce_chunk(TensorId id, int chunk, std::span<const ConstBytes> payloads,
                              MutableBytes out, const StepInfo& step);

  // Saves and restores every tensor's state keyed by "<tensor name>:<component>.<field>". import
  // ignores keys of tensors that are not registered, resets tensors with no saved state, and
  // rejects a saved shape that does not match the registered one.
  virtual StateDict export_state() const = 0;
  virtual Status import_state(const StateDict& state) = 0;

  virtual CompressorStats stats() const { return {}; }
};

// [begin, end) element bounds of chunk `chunk` when `numel` elements are split over `parts`
// chunks as evenly as possible (the first numel % parts chunks get one more element).
struct ChunkBounds {
  int64_t begin = 0;
  int64_t end = 0;
};
ChunkBounds chunk_bounds(int64_t numel, int parts, int chunk);

}  // namespace frugal
