// Generated image-classification data (the `synthetic` dataset): 28x28 byte images, each a noisy
// copy of its class's fixed random prototype, so models learn it quickly and benchmarks need no
// files. LibTorch-free; pure; thread-safe.
#pragma once

#include <cstdint>

#include "torch/idx_file.h"  // ImageClassificationSplit

namespace frugal {

// `count` samples with uniformly random labels. Prototypes depend on `seed` only, so the train
// split (split_id 0) and test split (split_id 1) of one seed share them; noise and labels depend
// on (seed, split_id).
ImageClassificationSplit make_synthetic_images(int64_t count, uint64_t seed, int split_id);

}  // namespace frugal
