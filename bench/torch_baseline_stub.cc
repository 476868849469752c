// Built instead of torch_baseline.cc when CMake finds no LibTorch: the benchmarks then report no
// torch::topk ratio.
#include "bench/torch_baseline.h"

namespace frugal::bench {

bool torch_available() { return false; }

void set_torch_threads(int /*threads*/) {}

Status torch_topk_abs(const float* /*data*/, const Shape& /*shape*/, int64_t /*k*/, int /*dim*/) {
  return unavailable("built without LibTorch: no torch::topk baseline");
}

}  // namespace frugal::bench
