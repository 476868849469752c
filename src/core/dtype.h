// Element types Frugal moves and reduces, with size, name and f16/bf16 <-> f32 conversion.
// Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/status.h"

namespace frugal {

enum class DType : uint8_t { kF32, kF64, kF16, kBF16, kI32, kI64, kU8 };

// Bytes per element.
size_t dtype_size(DType dtype);
// Short lowercase name: "f32", "bf16", ...
std::string_view dtype_name(DType dtype);
// Parses a name as printed by dtype_name; the error lists the valid names.
Result<DType> parse_dtype(std::string_view name);
bool is_floating(DType dtype);

// IEEE half and bfloat16 conversions, round to nearest even. NaN and Inf are preserved.
float f16_to_f32(uint16_t bits);
uint16_t f32_to_f16(float value);
float bf16_to_f32(uint16_t bits);
uint16_t f32_to_bf16(float value);

}  // namespace frugal
