// LibTorch reference kernels the benchmarks compare against (torch::topk). The only place bench/
// touches LibTorch (torch_baseline.cc), so no other bench file pays LibTorch's compile time.
// Thread-safe as LibTorch is (one caller at a time for set_torch_threads).
#pragma once

#include <cstdint>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::bench {

// True when built against LibTorch.
bool torch_available();

// Intra-op threads LibTorch may use (at::set_num_threads).
void set_torch_threads(int threads);

// Runs torch::topk(x.abs(), k) once on `data` viewed as `shape` (no copy): over the flattened
// tensor when dim < 0, else along `dim` (k per slice). LibTorch errors become InvalidArgument;
// Unavailable without LibTorch.
Status torch_topk_abs(const float* data, const Shape& shape, int64_t k, int dim);

}  // namespace frugal::bench
