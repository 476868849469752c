#include "torch/synthetic_images.h"

#include <algorithm>
#include <random>

namespace frugal {

ImageClassificationSplit make_synthetic_images(int64_t count, uint64_t seed, int split_id) {
  constexpr int64_t kSide = 28;
  constexpr int64_t kPixels = kSide * kSide;
  ImageClassificationSplit split;
  split.count = count;
  split.rows = kSide;
  split.cols = kSide;
  split.num_classes = 10;

  std::mt19937_64 prototype_gen(seed ^ 0x5EED0F1A6EULL);
  std::vector<uint8_t> prototypes(static_cast<size_t>(split.num_classes * kPixels));
  for (auto& p : prototypes) p = static_cast<uint8_t>(prototype_gen() % 256);

  std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(split_id) + 1);
  split.labels.resize(static_cast<size_t>(count));
  split.images.resize(static_cast<size_t>(count * kPixels));
  for (int64_t i = 0; i < count; ++i) {
    const auto label = static_cast<uint8_t>(gen() % 10);
    split.labels[static_cast<size_t>(i)] = label;
    const uint8_t* proto = prototypes.data() + label * kPixels;
    uint8_t* image = split.images.data() + i * kPixels;
    // Triangular noise in (-96, 96) from two random bytes per pixel: one generator call per
    // four pixels keeps 60k images well under a second (normal draws take seconds).
    for (int64_t p = 0; p < kPixels; p += 4) {
      uint64_t bits = gen();
      for (int64_t q = p; q < p + 4; ++q, bits >>= 16) {
        const int noise =
            (static_cast<int>(bits & 0xFF) + static_cast<int>((bits >> 8) & 0xFF) - 255) * 3 / 8;
        image[q] = static_cast<uint8_t>(std::clamp(proto[q] + noise, 0, 255));
      }
    }
  }
  return split;
}

}  // namespace frugal
