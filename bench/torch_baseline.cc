// Kept minimal on purpose: LibTorch headers take most of a minute to compile, so this file
// includes only the per-operator headers it needs.
#include "bench/torch_baseline.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/topk.h>

namespace frugal::bench {

bool torch_available() { return true; }

void set_torch_threads(int threads) { at::set_num_threads(threads); }

Status torch_topk_abs(const float* data, const Shape& shape, int64_t k, int dim) {
  // LibTorch reports errors by exception; this is the boundary where they become a Status.
  try {
    at::Tensor x = at::from_blob(const_cast<float*>(data), at::IntArrayRef(shape),
                                 at::TensorOptions().dtype(at::kFloat));
    if (dim < 0) x = x.view({-1});
    auto [values, indices] = at::topk(at::abs(x), k, dim < 0 ? 0 : dim);
    if (values.numel() == 0 && k > 0) return internal_error("torch::topk returned nothing");
    return Status::ok();
  } catch (const std::exception& e) {
    return invalid_argument(std::string("torch::topk: ") + e.what());
  }
}

}  // namespace frugal::bench
