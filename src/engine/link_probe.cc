#include "engine/link_probe.h"

#include <algorithm>
#include <array>
#include <cstddef>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/stats.h"

namespace frugal {
namespace {

constexpr int kRepeats = 5;  // the median counts: robust to one slow or one lucky run
// Buffer sizes from latency-bound to bandwidth-bound on 1-25 Gbit/s links.
constexpr std::array<size_t, 3> kSizes = {4 << 10, 256 << 10, 2 << 20};

template <typename Collective>
Result<double> median_us(Collective&& collective) {
  std::vector<double> times;
  for (int i = 0; i < kRepeats; ++i) {
    const int64_t start = now_us();
    FRUGAL_RETURN_IF_ERROR(collective());
    times.push_back(static_cast<double>(now_us() - start));
  }
  return median(std::move(times));
}

// Least-squares line time = latency + bytes * per_byte through the points, with the slope kept
// positive (a noisy small size can time slower than a larger one) and the intercept >= 0.
std::pair<double, double> fit(const std::vector<double>& bytes, const std::vector<double>& us) {
  const double n = static_cast<double>(bytes.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    sx += bytes[i];
    sy += us[i];
    sxx += bytes[i] * bytes[i];
    sxy += bytes[i] * us[i];
  }
  double slope = (n * sxy - sx * sy) / std::max(n * sxx - sx * sx, 1e-30);
  // Never below what the largest size alone implies with no latency at all, halved.
  slope = std::max(slope, 0.5 * us.back() / bytes.back());
  const double intercept = std::max(0.0, (sy - slope * sx) / n);
  return {intercept, slope};
}

}  // namespace

Result<LinkModel> probe_link(Communicator& comm) {
  const size_t n = static_cast<size_t>(comm.size());
  const size_t largest = kSizes.back();
  std::vector<float> reduce(largest / sizeof(float), 1.0f);
  std::vector<std::byte> in(largest / n + 1), out((largest / n + 1) * n);
  std::vector<double> bytes, reduce_us, gather_bytes, gather_us;
  for (size_t size : kSizes) {
    FRUGAL_ASSIGN_OR_RETURN(
        const double r, median_us([&] {
          return comm.allreduce(
              flat_view(reduce.data(), DType::kF32, static_cast<int64_t>(size / sizeof(float))),
              ReduceOp::kSum);
        }));
    // Blocks of size / n per rank: the gathered output is `size` bytes, as the model counts.
    const size_t block = size / n;
    FRUGAL_ASSIGN_OR_RETURN(const double g, median_us([&] {
                              return comm.allgather(ConstBytes(in.data(), block),
                                                    MutableBytes(out.data(), block * n));
                            }));
    bytes.push_back(static_cast<double>(size));
    reduce_us.push_back(r);
    gather_bytes.push_back(static_cast<double>(block * n));
    gather_us.push_back(g);
  }
  const auto [reduce_latency, reduce_per_byte] = fit(bytes, reduce_us);
  const auto [gather_latency, gather_per_byte] = fit(gather_bytes, gather_us);
  std::vector<double> model = {(reduce_latency + gather_latency) / 2, reduce_per_byte,
                               gather_per_byte};
  FRUGAL_RETURN_IF_ERROR(comm.allreduce(flat_view(model.data(), DType::kF64, 3), ReduceOp::kAvg)
                             .with_context("averaging the link probe over ranks"));
  return LinkModel{model[0], model[1], model[2]};
}

}  // namespace frugal
