#include "engine/link_probe.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/clock.h"

namespace frugal {
namespace {

constexpr int kRepeats = 3;              // the fastest of these counts (the others saw skew)
constexpr size_t kSmallBytes = 1024;     // latency-bound
constexpr size_t kLargeBytes = 1 << 20;  // bandwidth-bound on 1-25 Gbit/s links

template <typename Collective>
Result<double> fastest_us(Collective&& collective) {
  double best = 1e300;
  for (int i = 0; i < kRepeats; ++i) {
    const int64_t start = now_us();
    FRUGAL_RETURN_IF_ERROR(collective());
    best = std::min(best, static_cast<double>(now_us() - start));
  }
  return best;
}

}  // namespace

Result<LinkModel> probe_link(Communicator& comm) {
  const size_t n = static_cast<size_t>(comm.size());
  std::vector<float> reduce(kLargeBytes / sizeof(float), 1.0f);
  const auto allreduce = [&](size_t bytes) {
    return fastest_us([&] {
      return comm.allreduce(
          flat_view(reduce.data(), DType::kF32, static_cast<int64_t>(bytes / sizeof(float))),
          ReduceOp::kSum);
    });
  };
  // Per rank, a quarter of the large size: gathering n blocks costs about what the allreduce of
  // the same total moves.
  const size_t block_large = kLargeBytes / 4;
  std::vector<std::byte> in(block_large), out(block_large * n);
  const auto allgather = [&](size_t block) {
    return fastest_us([&] {
      return comm.allgather(ConstBytes(in.data(), block), MutableBytes(out.data(), block * n));
    });
  };
  FRUGAL_ASSIGN_OR_RETURN(const double reduce_small, allreduce(kSmallBytes));
  FRUGAL_ASSIGN_OR_RETURN(const double reduce_large, allreduce(kLargeBytes));
  FRUGAL_ASSIGN_OR_RETURN(const double gather_small, allgather(kSmallBytes / 4));
  FRUGAL_ASSIGN_OR_RETURN(const double gather_large, allgather(block_large));

  std::vector<double> model = {
      (reduce_small + gather_small) / 2,
      std::max(0.0, (reduce_large - reduce_small) / static_cast<double>(kLargeBytes - kSmallBytes)),
      std::max(0.0, (gather_large - gather_small) /
                        static_cast<double>((block_large - kSmallBytes / 4) * n)),
  };
  FRUGAL_RETURN_IF_ERROR(comm.allreduce(flat_view(model.data(), DType::kF64, 3), ReduceOp::kAvg)
                             .with_context("averaging the link probe over ranks"));
  return LinkModel{model[0], model[1], model[2]};
}

}  // namespace frugal
