#include "compress/testing/serial_exchange.h"

#include <cstring>

namespace frugal::testing {
namespace {

using Bytes = std::vector<std::byte>;

// Elementwise sum of equal-size payloads as arrays of `dtype`, with f32 arithmetic as the comm
// layer's allreduce does.
Result<Bytes> sum_payloads(const std::vector<Bytes>& payloads, DType dtype) {
  const size_t size = payloads.front().size();
  const size_t width = dtype_size(dtype);
  for (const Bytes& p : payloads) {
    if (p.size() != size || size % width != 0) {
      return invalid_argument("summed payloads differ in size or are not whole elements");
    }
  }
  Bytes out(size);
  for (size_t offset = 0; offset < size; offset += width) {
    float sum = 0;
    for (const Bytes& p : payloads) {
      if (dtype == DType::kF32) {
        float v;
        std::memcpy(&v, p.data() + offset, 4);
        sum += v;
      } else {
        uint16_t v;
        std::memcpy(&v, p.data() + offset, 2);
        sum += dtype == DType::kF16 ? f16_to_f32(v) : bf16_to_f32(v);
      }
    }
    if (dtype == DType::kF32) {
      std::memcpy(out.data() + offset, &sum, 4);
    } else {
      uint16_t v = dtype == DType::kF16 ? f32_to_f16(sum) : f32_to_bf16(sum);
      std::memcpy(out.data() + offset, &v, 2);
    }
  }
  return out;
}

}  // namespace

Result<SerialExchange> serial_exchange(std::span<Compressor* const> ranks, TensorId id,
                                       const std::vector<std::vector<float>>& grads,
                                       const StepInfo& step) {
  const int world = static_cast<int>(ranks.size());
  const Shape& shape = ranks[0]->tensor(id).shape;
  const int64_t numel = shape_numel(shape);
  SerialExchange result;
  std::vector<Bytes> payloads(world);
  for (int r = 0; r < world; ++r) {
    payloads[r].resize(ranks[r]->max_compressed_bytes(id));
    ConstView grad{grads[r].data(), DType::kF32, shape};
    FRUGAL_ASSIGN_OR_RETURN(size_t used, ranks[r]->compress(id, grad, payloads[r], step));
    payloads[r].resize(used);
    result.payload_bytes.push_back(used);
  }
  result.averaged.assign(world, std::vector<float>(static_cast<size_t>(numel), 0.0f));
  const Aggregation aggregation = ranks[0]->aggregation();
  for (int r = 0; r < world; ++r) {
    MutableView accum{result.averaged[r].data(), DType::kF32, shape};
    if (aggregation == Aggregation::kGather) {
      for (int source = 0; source < world; ++source) {
        FRUGAL_RETURN_IF_ERROR(ranks[r]->decompress_accumulate(id, payloads[source], accum));
      }
    }
  }
  if (aggregation == Aggregation::kSum) {
    const DType dtype = ranks[0]->payload_dtype();
    FRUGAL_ASSIGN_OR_RETURN(Bytes reduced, sum_payloads(payloads, dtype));
    for (int round = 0; round + 1 < ranks[0]->rounds(); ++round) {
      for (int r = 0; r < world; ++r) {
        payloads[r].resize(ranks[r]->max_compressed_bytes(id));
        FRUGAL_ASSIGN_OR_RETURN(size_t used,
                                ranks[r]->next_round(id, round, reduced, payloads[r], step));
        payloads[r].resize(used);
      }
      FRUGAL_ASSIGN_OR_RETURN(reduced, sum_payloads(payloads, dtype));
    }
    for (int r = 0; r < world; ++r) {
      MutableView accum{result.averaged[r].data(), DType::kF32, shape};
      FRUGAL_RETURN_IF_ERROR(ranks[r]->decompress_accumulate(id, reduced, accum));
    }
  }
  if (aggregation == Aggregation::kTwoPhase) {
    // Chunk c of rank r's payload starts after the chunks before it.
    std::vector<size_t> offsets(world + 1, 0);
    for (int c = 0; c < world; ++c) {
      ChunkBounds b = chunk_bounds(numel, world, c);
      offsets[c + 1] = offsets[c] + ranks[0]->chunk_payload_bytes(b.end - b.begin);
    }
    Bytes gathered(offsets[world]);
    for (int c = 0; c < world; ++c) {
      std::vector<ConstBytes> chunk_payloads;
      for (int r = 0; r < world; ++r) {
        if (payloads[r].size() != offsets[world]) {
          return internal_error("two-phase payload size differs from the chunk layout");
        }
        chunk_payloads.emplace_back(payloads[r].data() + offsets[c], offsets[c + 1] - offsets[c]);
      }
      MutableBytes out(gathered.data() + offsets[c], offsets[c + 1] - offsets[c]);
      FRUGAL_RETURN_IF_ERROR(ranks[c]->reduce_chunk(id, c, chunk_payloads, out, step));
    }
    for (int r = 0; r < world; ++r) {
      MutableView accum{result.averaged[r].data(), DType::kF32, shape};
      FRUGAL_RETURN_IF_ERROR(ranks[r]->decompress_accumulate(id, gathered, accum));
    }
  }
  for (auto& values : result.averaged) {
    for (float& v : values) v /= static_cast<float>(world);
  }
  return result;
}

}  // namespace frugal::testing
