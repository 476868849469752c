#include "compress/sparse_payload.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "compress/bytes.h"
#include "core/elementwise.h"

namespace frugal {
size_t sparse_payload_bytes(int64_t count, DType value_dtype) {
  return 4 + static_cast<size_t>(count) * (4 + dtype_size(value_dtype));
}

size_t encode_sparse(std::span<const float> dense, std::span<const uint32_t> indices,
                     DType value_dtype, MutableBytes out) {
  const size_t count = indices.size();
  FRUGAL_CHECK(out.size() >= sparse_payload_bytes(static_cast<int64_t>(count), value_dtype),
               "sparse payload buffer too small");
  std::byte* p = out.data();
  store<uint32_t>(p, static_cast<uint32_t>(count));
  if (count > 0) std::memcpy(p + 4, indices.data(), count * 4);
  std::byte* values = p + 4 + count * 4;
  switch (value_dtype) {
    case DType::kF32:
      for (size_t i = 0; i < count; ++i) store<float>(values + 4 * i, dense[indices[i]]);
      break;
    case DType::kF16:
      for (size_t i = 0; i < count; ++i) store(values + 2 * i, f32_to_f16(dense[indices[i]]));
      break;
    case DType::kBF16:
      for (size_t i = 0; i < count; ++i) store(values + 2 * i, f32_to_bf16(dense[indices[i]]));
      break;
    default:
      FRUGAL_CHECK(false, "sparse values must be f32, f16 or bf16");
  }
  return sparse_payload_bytes(static_cast<int64_t>(count), value_dtype);
}

uint32_t SparsePayloadView::index(int64_t i) const { return load<uint32_t>(indices + 4 * i); }

float SparsePayloadView::value(int64_t i) const {
  switch (value_dtype) {
    case DType::kF16:
      return f16_to_f32(load<uint16_t>(values + 2 * i));
    case DType::kBF16:
      return bf16_to_f32(load<uint16_t>(values + 2 * i));
    default:
      return load<float>(values + 4 * i);
  }
}

Result<SparsePayloadView> parse_sparse(ConstBytes payload, DType value_dtype, int64_t numel) {
  if (payload.size() < 4) {
    return data_loss("sparse payload of " + std::to_string(payload.size()) +
                     " bytes is shorter than its 4-byte header");
  }
  SparsePayloadView view;
  view.count = load<uint32_t>(payload.data());
  view.value_dtype = value_dtype;
  if (payload.size() != sparse_payload_bytes(view.count, value_dtype)) {
    return data_loss("sparse payload says " + std::to_string(view.count) + " entries (" +
                     std::to_string(sparse_payload_bytes(view.count, value_dtype)) +
                     " bytes) but has " + std::to_string(payload.size()) + " bytes");
  }
  if (view.count > numel) {
    return data_loss("sparse payload has " + std::to_string(view.count) +
                     " entries for a tensor of " + std::to_string(numel));
  }
  view.indices = payload.data() + 4;
  view.values = view.indices + 4 * view.count;
  return view;
}

namespace {

// Entry `entry`'s index is out of range (>= numel) or not above the previous entry's.
Status bad_index(int64_t entry, int64_t index, int64_t previous, int64_t numel) {
  return data_loss("sparse payload entry " + std::to_string(entry) + " has index " +
                   std::to_string(index) + (index >= numel ? " beyond " : " not above ") +
                   std::to_string(index >= numel ? numel - 1 : previous));
}

}  // namespace

Status scatter_add_sparse(const SparsePayloadView& payload, std::span<float> accum, float scale) {
  const auto numel = static_cast<int64_t>(accum.size());
  int64_t previous = -1;
  for (int64_t i = 0; i < payload.count; ++i) {
    const int64_t index = payload.index(i);
    if (index >= numel || index <= previous) return bad_index(i, index, previous, numel);
    accum[static_cast<size_t>(index)] += scale * payload.value(i);
    previous = index;
  }
  return Status::ok();
}

Status gather_sparse(std::span<const SparsePayloadView> payloads, std::span<float> target,
                     float divisor) {
  // 16 KiB: a block and the payloads' entries that land in it stay in L1 between its zeroing,
  // the additions and the division. A large target's blocks are built in a scratch block and
  // streamed out (divide_floats_streaming), so the target is written once and never read.
  constexpr size_t kBlockFloats = 4096;
  const auto numel = static_cast<int64_t>(target.size());
  const bool stream = target.size_bytes() >= kStreamingResultBytes;
  std::vector<float> scratch(stream ? kBlockFloats : 0);
  std::vector<int64_t> next(payloads.size(), 0);  // per payload: its first entry not yet added
  std::vector<int64_t> previous(payloads.size(), -1);
  for (size_t begin = 0; begin < target.size(); begin += kBlockFloats) {
    const size_t end = std::min(target.size(), begin + kBlockFloats);
    float* out = target.data() + begin;
    float* work = stream ? scratch.data() : out;  // work[i - begin] is element i
    std::fill(work, work + (end - begin), 0.0f);
    for (size_t p = 0; p < payloads.size(); ++p) {
      const SparsePayloadView& payload = payloads[p];
      int64_t i = next[p];
      for (; i < payload.count; ++i) {
        const int64_t index = payload.index(i);
        if (index >= static_cast<int64_t>(end)) break;  // a later block's, or out of range
        if (index <= previous[p]) {
          return bad_index(i, index, previous[p], numel)
              .with_context("payload " + std::to_string(p));
        }
        work[static_cast<size_t>(index) - begin] += payload.value(i);
        previous[p] = index;
      }
      next[p] = i;
    }
    if (stream) {
      divide_floats_streaming(out, work, end - begin, divisor);
    } else {
      divide_floats(out, end - begin, divisor);
    }
  }
  for (size_t p = 0; p < payloads.size(); ++p) {
    if (next[p] < payloads[p].count) {  // an index at or beyond numel stopped it
      return bad_index(next[p], payloads[p].index(next[p]), previous[p], numel)
          .with_context("payload " + std::to_string(p));
    }
  }
  return Status::ok();
}

}  // namespace frugal
