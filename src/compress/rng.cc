#include "compress/rng.h"

#include <xxhash.h>

namespace frugal {
namespace {
__extension__ using Uint128 = unsigned __int128;  // GCC/Clang builtin; -Wpedantic needs the mark
}  // namespace

uint64_t stream_seed(uint64_t job_seed, int64_t step, std::string_view tensor_name,
                     RngPurpose purpose) {
  const uint64_t name_hash = XXH3_64bits(tensor_name.data(), tensor_name.size());
  const uint64_t key[4] = {job_seed, static_cast<uint64_t>(step), name_hash,
                           static_cast<uint64_t>(purpose)};
  return XXH3_64bits(key, sizeof(key));
}

uint64_t Rng::below(uint64_t n) {
  // Lemire, "Fast Random Integer Generation in an Interval" (2019).
  Uint128 m = static_cast<Uint128>(next()) * n;
  auto low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = -n % n;
    while (low < threshold) {
      m = static_cast<Uint128>(next()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

}  // namespace frugal
