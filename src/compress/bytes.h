// Unaligned little-endian loads and stores for payload encoding: payloads are packed back to back
// in fusion buffers, so no field may assume alignment. memcpy compiles to a plain move on x86.
// Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstring>

namespace frugal {

template <typename T>
T load(const std::byte* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

template <typename T>
void store(std::byte* p, T value) {
  std::memcpy(p, &value, sizeof(T));
}

}  // namespace frugal
