// What a checkpoint holds, as named byte ranges. Two kinds of state:
// - replicated: identical on every data-parallel rank (parameters, optimizer moments, buffers).
//   Their bytes are concatenated in a fixed order into one logical space, and rank r of N writes
//   only its share partition(total, r, N) of it, so N ranks write 1/N each.
// - per-rank: differs between ranks (error-feedback residuals, RNG states). Each rank writes its
//   own, after its replicated share, in its own shard file.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/tensor_view.h"

namespace frugal::ckpt {

enum class Sharing : uint8_t { kReplicated, kPerRank };

// One named piece of state, as the checkpoint records it.
struct EntryInfo {
  std::string name;  // stable across runs, e.g. "param/fc1.weight", "optim/fc1.weight/exp_avg"
  DType dtype = DType::kF32;
  Shape shape;
  int64_t bytes = 0;  // numel(shape) * dtype_size(dtype)
};

// [lo, hi) in bytes.
struct ByteRange {
  int64_t lo = 0;
  int64_t hi = 0;
  int64_t size() const { return hi > lo ? hi - lo : 0; }
  bool empty() const { return size() == 0; }
  friend bool operator==(const ByteRange&, const ByteRange&) = default;
};

// Rank `rank` of `world`'s share of a space of `total` bytes. Boundaries are multiples of
// `align` (except `total` itself), so shares are whole chunks; with few chunks, trailing ranks
// get empty shares. The shares of ranks 0..world-1 tile [0, total) in order.
// REQUIRES: total >= 0, 0 <= rank < world, align > 0.
ByteRange partition(int64_t total, int rank, int world, int64_t align);

// The overlap of two ranges (empty when they do not overlap).
ByteRange intersect(ByteRange a, ByteRange b);

// Entries laid end to end: offsets[i] is where entry i starts; total is the sum of their bytes.
struct PackedLayout {
  std::vector<EntryInfo> entries;
  std::vector<int64_t> offsets;
  int64_t total = 0;
};
PackedLayout pack(std::vector<EntryInfo> entries);

// Bytes of a tensor of this dtype and shape; -1 if a dimension is negative or the size overflows
// int64 (shapes read from a checkpoint are checked with it before they are trusted).
int64_t entry_bytes(DType dtype, const Shape& shape);

}  // namespace frugal::ckpt
