#include "engine/bucket.h"

#include <algorithm>

namespace frugal {

std::vector<Bucket> plan_buckets(std::span<const size_t> tensor_bytes,
                                 size_t fusion_threshold_bytes, size_t first_bucket_bytes,
                                 size_t own_bucket_bytes) {
  std::vector<Bucket> buckets;
  bool last_is_own = false;  // the bucket being filled holds a tensor that must stay alone
  for (size_t i = 0; i < tensor_bytes.size(); ++i) {
    const size_t bytes = tensor_bytes[i];
    const bool own = own_bucket_bytes > 0 && bytes >= own_bucket_bytes;
    // The cap of the bucket being filled: the first one is small so that the first collective
    // starts while most of backward is still ahead.
    const size_t cap = buckets.size() == 1 ? std::min(first_bucket_bytes, fusion_threshold_bytes)
                                           : fusion_threshold_bytes;
    const bool fits =
        !buckets.empty() && !own && !last_is_own && buckets.back().bytes + bytes <= cap;
    last_is_own = own;
    if (!fits) {
      Bucket bucket;
      bucket.index = static_cast<int>(buckets.size());
      buckets.push_back(std::move(bucket));
    }
    Bucket& bucket = buckets.back();
    bucket.tensors.push_back({static_cast<TensorId>(i), bucket.bytes, bytes});
    bucket.bytes += bytes;
  }
  return buckets;
}

}  // namespace frugal
