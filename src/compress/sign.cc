// The sign family, all two-phase (Aggregation::kTwoPhase, DeepSpeed's compressed allreduce):
// compress() splits the flat tensor into world_size chunks (chunk_bounds) and writes one payload
// per chunk; the owner of chunk c combines the world_size payloads of c into one (reduce_chunk);
// every rank decodes the reduced chunks. Signs use the layout of bit_pack.h (a set bit is a
// negative value; +0 and -0 are "+").
//
//   signsgd     signSGD with majority vote (Bernstein et al. 2018, 2019). Chunk payload: the
//               packed signs. The owner votes: "-" when more than half of the ranks sent "-", so a
//               tie is "+". Decoded as world_size * vote, so the engine's average is the voted
//               sign. No scale, no error feedback (the vote is the algorithm).
//   ef-signsgd  EF-signSGD (Karimireddy et al. 2019) in DeepSpeed's two-sided form: each rank sends
//               scale * sign(p) with p = gradient + worker error and scale = ||p||_1 / n over the
//               chunk, keeping worker error = p - scale * sign(p); the owner averages the decoded
//               chunks, adds its server error, recompresses with the same rule and keeps the new
//               server error. Decoded as world_size * server scale * server sign.
//   onebit      DeepSpeed's 1-bit compressed allreduce (1-bit Adam, Tang et al. 2021): as
//               ef-signsgd with scale = ||p||_2 / sqrt(n). DeepSpeed uses one worker scale per
//               tensor; here every chunk carries its own (4 bytes per chunk, a finer fit).
//
// Cost model (n elements, W ranks): signsgd sends ceil(n_c / 8) bytes per chunk, about n / 8
// bytes through the alltoall and n / 8 through the allgather per rank; ef-signsgd and onebit add
// a 4-byte f32 scale per chunk (n / 8 + 4W bytes each way). Compute: two passes over gradient and
// worker error on compress; on reduce, one pass over the owned chunk for the world_size payloads
// (blocked to stay in L1) and one to repack; one pass on decode.
//
// State (ef-signsgd, onebit), keyed "<tensor>:<name>.<field>": worker_error (the tensor's shape),
// server_error (the owned chunk) and server_chunk (i64 [chunk, world_size]). A server error saved
// under a different world size is dropped on import: it belongs to a chunk that no longer exists,
// and it holds one step's compression error only.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>

#include "compress/bit_pack.h"
#include "compress/bytes.h"
#include "compress/compressor_base.h"
#include "compress/registry.h"

namespace frugal {
namespace {

// What the sign compressors share: the chunk layout of a two-phase payload.
class TwoPhaseSignBase : public CompressorBase {
 public:
  Aggregation aggregation() const override { return Aggregation::kTwoPhase; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    size_t bytes = 0;
    for (int c = 0; c < world(); ++c) bytes += chunk_payload_bytes(chunk_numel(id, c));
    return bytes;
  }

 protected:
  using CompressorBase::CompressorBase;

  int world() const { return context().world_size; }
  ChunkBounds bounds(TensorId id, int chunk) const {
    return chunk_bounds(numel(id), world(), chunk);
  }
  int64_t chunk_numel(TensorId id, int chunk) const {
    const ChunkBounds b = bounds(id, chunk);
    return b.end - b.begin;
  }

  // Checks the arguments of reduce_chunk: a registered tensor, a chunk index, world_size payloads
  // of the chunk's size and room for the result.
  Status check_reduce_args(TensorId id, int chunk, std::span<const ConstBytes> payloads,
                           MutableBytes out) const {
    if (id < 0 || id >= num_tensors()) {
      return invalid_argument(spec() + ": tensor id " + std::to_string(id) + " is not registered");
    }
    if (chunk < 0 || chunk >= world()) {
      return invalid_argument(spec() + ": chunk " + std::to_string(chunk) + " of tensor '" +
                              tensor(id).name + "' is out of range; world size is " +
                              std::to_string(world()));
    }
    if (static_cast<int>(payloads.size()) != world()) {
      return invalid_argument(spec() + ": reducing chunk " + std::to_string(chunk) +
                              " of tensor '" + tensor(id).name + "' needs " +
                              std::to_string(world()) + " payloads; got " +
                              std::to_string(payloads.size()));
    }
    const size_t expected = chunk_payload_bytes(chunk_numel(id, chunk));
    for (size_t r = 0; r < payloads.size(); ++r) {
      if (payloads[r].size() != expected) {
        return corrupt_payload(id, "chunk " + std::to_string(chunk) + " from rank " +
                                       std::to_string(r) + " has " +
                                       std::to_string(payloads[r].size()) + " bytes; expected " +
                                       std::to_string(expected));
      }
    }
    FRUGAL_CHECK(out.size() >= expected, "reduce_chunk output buffer too small");
    return Status::ok();
  }

  Status check_payload_size(TensorId id, ConstBytes payload) const {
    if (payload.size() != max_compressed_bytes(id)) {
      return corrupt_payload(id, std::to_string(payload.size()) + " bytes; expected " +
                                     std::to_string(max_compressed_bytes(id)) + " (" +
                                     std::to_string(world()) + " chunks)");
    }
    return Status::ok();
  }
};

// ---------------------------------------------------------------------------------------------
// signsgd: majority vote.

class SignSgdCompressor final : public TwoPhaseSignBase {
 public:
  explicit SignSgdCompressor(const CompressorContext& context) : TwoPhaseSignBase(context) {}

  std::string spec() const override { return "signsgd"; }
  size_t chunk_payload_bytes(int64_t chunk_numel) const override {
    return packed_bytes(chunk_numel);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const auto* values = static_cast<const float*>(grad.data);
    // Chunks of n_c elements pack to ceil(n_c / 8) bytes each, so each starts on its own byte.
    bool non_finite = false;
    size_t offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      const auto n = static_cast<size_t>(b.end - b.begin);
      non_finite |= pack_negative_bits(values + b.begin, n, out.data() + offset);
      offset += packed_bytes(b.end - b.begin);
    }
    if (non_finite) return non_finite_error(id);
    return offset;
  }

  Status reduce_chunk(TensorId id, int chunk, std::span<const ConstBytes> payloads,
                      MutableBytes out, const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_reduce_args(id, chunk, payloads, out));
    const size_t bytes = chunk_payload_bytes(chunk_numel(id, chunk));
    const int voters = world();
    // Per output byte, count the "-" votes of its 8 elements over the ranks: no scratch buffer,
    // world_size operations per element on the owner, n operations per rank in total.
    for (size_t b = 0; b < bytes; ++b) {
      int negative_votes[8] = {};
      for (const ConstBytes& payload : payloads) {
        const auto byte = static_cast<unsigned>(payload[b]);
        for (int j = 0; j < 8; ++j) negative_votes[j] += static_cast<int>((byte >> j) & 1u);
      }
      unsigned result = 0;
      for (int j = 0; j < 8; ++j) {
        result |= (2 * negative_votes[j] > voters ? 1u : 0u) << j;  // a tie votes "+"
      }
      out[b] = static_cast<std::byte>(result);
    }
    return Status::ok();
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload));
    // world_size * vote: the engine divides the sum by the world size.
    decode(id, payload, static_cast<float>(world()), static_cast<float*>(accum.data));
    return Status::ok();
  }

  // This rank's own contribution is sign(x), without the world_size factor of the vote.
  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, target, "target"));
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload));
    decode(id, payload, -1.0f, static_cast<float*>(target.data));
    return Status::ok();
  }

 private:
  void decode(TensorId id, ConstBytes payload, float magnitude, float* accum) const {
    size_t offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      add_signed_bits(payload.data() + offset, static_cast<size_t>(b.end - b.begin), magnitude,
                      accum + b.begin);
      offset += packed_bytes(b.end - b.begin);
    }
  }
};

// ---------------------------------------------------------------------------------------------
// ef-signsgd and onebit: scaled signs with worker and server error feedback.

enum class ScaleNorm { kL1, kL2 };  // ||p||_1 / n (ef-signsgd) or ||p||_2 / sqrt(n) (onebit)

class ScaledSignCompressor final : public TwoPhaseSignBase {
 public:
  ScaledSignCompressor(const CompressorContext& context, ScaleNorm norm)
      : TwoPhaseSignBase(context), norm_(norm) {}

  std::string spec() const override { return norm_ == ScaleNorm::kL1 ? "ef-signsgd" : "onebit"; }
  // An f32 scale, then the packed signs.
  size_t chunk_payload_bytes(int64_t chunk_numel) const override {
    return sizeof(float) + packed_bytes(chunk_numel);
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    FRUGAL_CHECK(out.size() >= max_compressed_bytes(id), "output buffer too small");
    const auto* values = static_cast<const float*>(grad.data);
    float* residual = states_[static_cast<size_t>(id)].worker_error.data();
    // Pass 1 is read-only: a NaN or Inf fails the call before the worker error changes, so a
    // skipped step (loss scaling) does not poison the residual. It leaves each chunk's scale in
    // the chunk's header, where pass 2 reads it back.
    bool non_finite = false;
    size_t offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      const CompensatedSums sums = compensated_sums(values + b.begin, residual + b.begin,
                                                    static_cast<size_t>(b.end - b.begin));
      non_finite |= sums.non_finite;
      store(out.data() + offset, scale_of(sums, b.end - b.begin));
      offset += chunk_payload_bytes(b.end - b.begin);
    }
    if (non_finite) return non_finite_error(id);
    offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      pack_compensated(values + b.begin, residual + b.begin, static_cast<size_t>(b.end - b.begin),
                       load<float>(out.data() + offset), out.data() + offset + sizeof(float));
      offset += chunk_payload_bytes(b.end - b.begin);
    }
    return offset;
  }

  Status reduce_chunk(TensorId id, int chunk, std::span<const ConstBytes> payloads,
                      MutableBytes out, const StepInfo& /*step*/) override {
    FRUGAL_RETURN_IF_ERROR(check_reduce_args(id, chunk, payloads, out));
    const int64_t n = chunk_numel(id, chunk);
    for (size_t r = 0; r < payloads.size(); ++r) {
      FRUGAL_RETURN_IF_ERROR(
          check_scale(id, load<float>(payloads[r].data()),
                      "chunk " + std::to_string(chunk) + " from rank " + std::to_string(r)));
    }
    TensorState& state = states_[static_cast<size_t>(id)];
    if (state.server_chunk != chunk) {
      // First reduction of this chunk here (or the chunk moved): start with no server error.
      residual_bytes_ += (n - static_cast<int64_t>(state.server_error.size())) * 4;
      state.server_error.assign(static_cast<size_t>(n), 0.0f);
      state.server_chunk = chunk;
    }
    float* server_error = state.server_error.data();
    // compensated = server error + sum over ranks (in rank order) of scale_r / W * sign_r, built
    // block by block so that the world_size passes stay in L1 and memory sees one pass.
    const float inverse_world = 1.0f / static_cast<float>(world());
    constexpr int64_t kBlock = 2048;  // a multiple of 8: blocks start on a payload byte
    CompensatedSums sums;
    for (int64_t begin = 0; begin < n; begin += kBlock) {
      const auto count = static_cast<size_t>(std::min(kBlock, n - begin));
      for (const ConstBytes& payload : payloads) {
        add_signed_bits(payload.data() + sizeof(float) + begin / 8, count,
                        load<float>(payload.data()) * inverse_world, server_error + begin);
      }
      const CompensatedSums block = compensated_sums(nullptr, server_error + begin, count);
      sums.abs_sum += block.abs_sum;
      sums.square_sum += block.square_sum;
      sums.non_finite |= block.non_finite;
    }
    if (sums.non_finite) {
      // Only an overflow of finite inputs gets here; drop the server error rather than keep Inf.
      state.server_error.assign(static_cast<size_t>(n), 0.0f);
      return non_finite_error(id);
    }
    const float scale = scale_of(sums, n);
    store(out.data(), scale);
    pack_compensated(nullptr, server_error, static_cast<size_t>(n), scale,
                     out.data() + sizeof(float));
    return Status::ok();
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    // The reduced chunk holds the average; the engine divides the sum by the world size.
    return decode(id, payload, static_cast<float>(world()), static_cast<float*>(accum.data));
  }

  // This rank's own contribution is scale * sign per chunk, without the world_size factor.
  Status subtract_own_payload(TensorId id, ConstBytes payload, MutableView target) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, target, "target"));
    return decode(id, payload, -1.0f, static_cast<float*>(target.data));
  }

  StateDict export_state() const override {
    StateDict state;
    for (TensorId id = 0; id < num_tensors(); ++id) {
      const TensorState& s = states_[static_cast<size_t>(id)];
      const std::string& name = tensor(id).name;
      save_f32_state(state, key(name, "worker_error"), tensor(id).shape, s.worker_error);
      if (s.server_chunk < 0) continue;
      save_f32_state(state, key(name, "server_error"), {chunk_numel(id, s.server_chunk)},
                     s.server_error);
      StateTensor& chunk = state[key(name, "server_chunk")];
      chunk.dtype = DType::kI64;
      chunk.shape = {2};
      const int64_t fields[2] = {s.server_chunk, world()};
      chunk.data.resize(sizeof(fields));
      std::memcpy(chunk.data.data(), fields, sizeof(fields));
    }
    return state;
  }

  Status import_state(const StateDict& saved) override {
    // Validate everything before changing anything, so a rejected import leaves the state as is.
    std::vector<TensorState> loaded(states_.size());
    for (TensorId id = 0; id < num_tensors(); ++id) {
      TensorState& s = loaded[static_cast<size_t>(id)];
      const std::string& name = tensor(id).name;
      FRUGAL_ASSIGN_OR_RETURN(bool found, load_f32_state(saved, key(name, "worker_error"),
                                                         tensor(id).shape, s.worker_error));
      if (!found) s.worker_error.assign(static_cast<size_t>(numel(id)), 0.0f);
      auto it = saved.find(key(name, "server_chunk"));
      if (it == saved.end()) continue;
      const StateTensor& chunk = it->second;
      int64_t fields[2] = {};
      if (chunk.dtype != DType::kI64 || chunk.data.size() != sizeof(fields)) {
        return data_loss("saved compressor state '" + it->first +
                         "' must be i64 [chunk, world_size]");
      }
      std::memcpy(fields, chunk.data.data(), sizeof(fields));
      if (fields[1] != world()) continue;  // another world size: see the file comment
      if (fields[0] < 0 || fields[0] >= world()) {
        return data_loss("saved compressor state '" + it->first + "' names chunk " +
                         std::to_string(fields[0]) + " of " + std::to_string(world()));
      }
      const int c = static_cast<int>(fields[0]);
      FRUGAL_ASSIGN_OR_RETURN(bool has_error, load_f32_state(saved, key(name, "server_error"),
                                                             {chunk_numel(id, c)}, s.server_error));
      if (has_error) s.server_chunk = c;
    }
    states_ = std::move(loaded);
    int64_t bytes = 0;
    for (const TensorState& s : states_) {
      bytes += static_cast<int64_t>(s.worker_error.size() + s.server_error.size()) * 4;
    }
    residual_bytes_ = bytes;
    return Status::ok();
  }

  CompressorStats stats() const override { return {residual_bytes_.load(), 0}; }

 protected:
  Status on_register(TensorId id, const TensorInfo& info) override {
    FRUGAL_CHECK(static_cast<size_t>(id) == states_.size(), "tensor ids are dense");
    states_.emplace_back();
    states_.back().worker_error.assign(static_cast<size_t>(shape_numel(info.shape)), 0.0f);
    residual_bytes_ += shape_numel(info.shape) * 4;
    return Status::ok();
  }

 private:
  struct TensorState {
    std::vector<float> worker_error;  // the tensor's shape
    int server_chunk = -1;            // the chunk this rank reduced last; -1: none yet
    std::vector<float> server_error;  // that chunk's elements
  };

  std::string key(const std::string& tensor_name, const char* field) const {
    return state_key(tensor_name, spec() + "." + field);
  }

  float scale_of(const CompensatedSums& sums, int64_t n) const {
    if (n == 0) return 0.0f;
    const auto count = static_cast<double>(n);
    // Finite inputs give a finite scale: a mean of |p| or the root of a mean of p^2 never exceeds
    // the largest |p|.
    return static_cast<float>(norm_ == ScaleNorm::kL1 ? sums.abs_sum / count
                                                      : std::sqrt(sums.square_sum / count));
  }

  Status check_scale(TensorId id, float scale, const std::string& where) const {
    if (!(scale >= 0.0f) || !std::isfinite(scale)) {
      return corrupt_payload(
          id, where + " has scale " + std::to_string(scale) + "; a scale is finite and >= 0");
    }
    return Status::ok();
  }

  // Adds magnitude * scale_c * sign for every chunk c of `payload` (world_size chunks).
  Status decode(TensorId id, ConstBytes payload, float magnitude, float* accum) const {
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload));
    size_t offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      const auto scale = load<float>(payload.data() + offset);
      FRUGAL_RETURN_IF_ERROR(check_scale(id, scale, "chunk " + std::to_string(c)));
      offset += chunk_payload_bytes(b.end - b.begin);
    }
    offset = 0;
    for (int c = 0; c < world(); ++c) {
      const ChunkBounds b = bounds(id, c);
      const auto scale = load<float>(payload.data() + offset);
      add_signed_bits(payload.data() + offset + sizeof(float), static_cast<size_t>(b.end - b.begin),
                      magnitude * scale, accum + b.begin);
      offset += chunk_payload_bytes(b.end - b.begin);
    }
    return Status::ok();
  }

  ScaleNorm norm_;
  std::vector<TensorState> states_;  // by TensorId
  std::atomic<int64_t> residual_bytes_{0};
};

CompressorFactory sign_factory(bool majority_vote, ScaleNorm norm) {
  return [majority_vote, norm](const BuildRequest& request) -> Result<std::unique_ptr<Compressor>> {
    if (request.value_dtype != DType::kF32) {
      return invalid_argument(
          request.node.name +
          " sends packed signs; it cannot be wrapped in fp16(...) or bf16(...)");
    }
    if (majority_vote) return std::unique_ptr<Compressor>(new SignSgdCompressor(request.context));
    return std::unique_ptr<Compressor>(new ScaledSignCompressor(request.context, norm));
  };
}

}  // namespace

std::vector<CompressorEntry> sign_compressor_entries() {
  return {
      {"signsgd",
       "signSGD with majority vote: 1 bit per element, two-phase (ties vote +)",
       {},
       InnerSpec::kNone,
       {"signsgd"},
       sign_factory(true, ScaleNorm::kL1)},
      {"ef-signsgd",
       "EF-signSGD: sign times ||x||_1/n per chunk, worker and server error feedback, two-phase",
       {},
       InnerSpec::kNone,
       {"ef-signsgd"},
       sign_factory(false, ScaleNorm::kL1)},
      {"onebit",
       "DeepSpeed 1-bit compressed allreduce: sign times ||x||_2/sqrt(n) per chunk, worker and "
       "server error feedback, two-phase",
       {},
       InnerSpec::kNone,
       {"onebit"},
       sign_factory(false, ScaleNorm::kL2)},
  };
}

}  // namespace frugal
