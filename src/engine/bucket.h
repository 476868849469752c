// Bucket planning: which consecutive registered tensors are fused into one collective. Pure
// functions and plain structs; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "compress/compressor.h"  // TensorId

namespace frugal {

// Where one tensor lies inside its bucket's fusion buffer.
struct TensorSlot {
  TensorId id = 0;
  size_t offset_bytes = 0;  // from the start of the bucket's dense layout
  size_t bytes = 0;
  bool compressed = false;  // sparsified (alone, or with the bucket's buffer); else dense
};

// A group of consecutive tensors (in registration = backward order) exchanged by one collective.
struct Bucket {
  int index = 0;  // launch order: every rank launches bucket 0, 1, 2, ... in this order
  std::vector<TensorSlot> tensors;
  size_t bytes = 0;  // sum of the tensors' bytes
  // Sparsify-behind: the compressed tensors are fused (dense) and compressed as one buffer.
  // Otherwise each compressed tensor is compressed alone, as soon as it is ready.
  bool compress_fused = false;
  // The dense slots travel inside the allgather of the compressed payloads (every rank sums the
  // n copies in rank order) instead of an allreduce of their own: one collective, and so one
  // latency, less per bucket, for (n-1) x bytes on the wire against 2(n-1)/n x bytes. Set by the
  // cost-model planners where it pays, for gather compressors only.
  bool dense_rides_gather = false;
};

// Packs tensors, in the given order, greedily into buckets of at most `fusion_threshold_bytes`
// (Horovod's rule); the first bucket is capped at min(first_bucket_bytes, fusion_threshold_bytes)
// so that communication starts early in backward (PyTorch DDP's rule). A tensor larger than the
// cap gets a bucket of its own. fusion_threshold_bytes == 0 gives one bucket per tensor (WFBP).
// A tensor of at least own_bucket_bytes (if > 0) also gets a bucket of its own, and the next
// tensor starts a new one: fusion amortizes per-collective latency, which a multi-megabyte
// transfer dwarfs, while copying a tensor into and out of a fusion buffer costs two passes over
// its bytes (a single-tensor bucket is exchanged in place).
std::vector<Bucket> plan_buckets(std::span<const size_t> tensor_bytes,
                                 size_t fusion_threshold_bytes, size_t first_bucket_bytes,
                                 size_t own_bucket_bytes = 0);

}  // namespace frugal
