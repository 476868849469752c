// Little-endian encoding of the fixed-width fields of the shard format, and a bounds-checked
// cursor that decodes bytes read from a file without trusting them. Internal to ckpt/; pure
// functions and values, thread-compatible.
#pragma once

#include <xxhash.h>

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::ckpt {

// The format is little-endian; on a little-endian host memcpy is the whole conversion.
static_assert(std::endian::native == std::endian::little,
              "the checkpoint format code assumes a little-endian host");

inline uint64_t xxh3(ConstBytes bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }
inline uint64_t xxh3(std::string_view text) { return XXH3_64bits(text.data(), text.size()); }

inline ConstBytes text_bytes(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

// Appends `value` to `out` as sizeof(T) little-endian bytes.
template <typename T>
void put_le(std::string& out, T value) {
  static_assert(std::is_integral_v<T>);
  char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  out.append(bytes, sizeof(T));
}

// Fixed-layout access (headers, trailers) at a known offset.
// REQUIRES: offset + sizeof(T) <= size.
template <typename T>
void store_le(std::string& out, size_t offset, T value) {
  static_assert(std::is_integral_v<T>);
  FRUGAL_CHECK(offset + sizeof(T) <= out.size(), "store_le out of bounds");
  std::memcpy(out.data() + offset, &value, sizeof(T));
}
template <typename T>
T load_le(ConstBytes bytes, size_t offset) {
  static_assert(std::is_integral_v<T>);
  FRUGAL_CHECK(offset + sizeof(T) <= bytes.size(), "load_le out of bounds");
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Reads a sequence of fields from `bytes`, which start at file offset `file_offset`. Every read
// checks that the bytes exist first; offset() is the file offset of the next unread byte, which
// is what error messages report.
class ByteCursor {
 public:
  ByteCursor(ConstBytes bytes, int64_t file_offset) : bytes_(bytes), file_offset_(file_offset) {}

  int64_t offset() const { return file_offset_ + static_cast<int64_t>(position_); }
  size_t remaining() const { return bytes_.size() - position_; }

  // False (and nothing consumed) if fewer than sizeof(T) bytes remain.
  template <typename T>
  bool get(T* value) {
    static_assert(std::is_integral_v<T>);
    if (remaining() < sizeof(T)) return false;
    std::memcpy(value, bytes_.data() + position_, sizeof(T));
    position_ += sizeof(T);
    return true;
  }

  // The next `count` bytes as a view; false if fewer remain.
  bool get_bytes(size_t count, ConstBytes* out) {
    if (remaining() < count) return false;
    *out = bytes_.subspan(position_, count);
    position_ += count;
    return true;
  }

 private:
  ConstBytes bytes_;
  int64_t file_offset_ = 0;
  size_t position_ = 0;
};

}  // namespace frugal::ckpt
