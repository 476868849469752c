#include "ckpt/layout.h"

#include <algorithm>
#include <string>

#include "core/status.h"

namespace frugal::ckpt {

ByteRange partition(int64_t total, int rank, int world, int64_t align) {
  FRUGAL_CHECK(total >= 0 && align > 0 && world > 0 && rank >= 0 && rank < world,
               "partition(total=" + std::to_string(total) + ", rank=" + std::to_string(rank) +
                   ", world=" + std::to_string(world) + ", align=" + std::to_string(align) + ")");
  // Whole chunks, dealt as evenly as possible: the first `extra` ranks get one more. With fewer
  // chunks than ranks the empty shares are the trailing ones, as the header promises.
  const int64_t chunks = total / align + (total % align != 0 ? 1 : 0);
  const int64_t base = chunks / world;
  const int64_t extra = chunks % world;
  // Chunk index -> byte offset. Only index `chunks` can pass `total` (the last chunk may be
  // short), so the multiplication never overflows.
  auto boundary = [&](int64_t r) {
    const int64_t chunk = r * base + std::min(r, extra);
    return chunk >= chunks ? total : chunk * align;
  };
  return {boundary(rank), boundary(int64_t{rank} + 1)};
}

ByteRange intersect(ByteRange a, ByteRange b) {
  const int64_t lo = std::max(a.lo, b.lo);
  const int64_t hi = std::min(a.hi, b.hi);
  if (hi <= lo) return {};
  return {lo, hi};
}

PackedLayout pack(std::vector<EntryInfo> entries) {
  PackedLayout layout;
  layout.offsets.reserve(entries.size());
  for (const EntryInfo& entry : entries) {
    layout.offsets.push_back(layout.total);
    layout.total += entry.bytes;
  }
  layout.entries = std::move(entries);
  return layout;
}

int64_t entry_bytes(DType dtype, const Shape& shape) {
  int64_t bytes = static_cast<int64_t>(dtype_size(dtype));
  for (int64_t dim : shape) {
    if (dim < 0 || __builtin_mul_overflow(bytes, dim, &bytes)) return -1;
  }
  return bytes;
}

}  // namespace frugal::ckpt
