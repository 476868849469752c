// The unbiased stochastic compressors: qsgd and terngrad (here), and randomk (randomk.cc, listed
// here too because registry.cc names one function per family). QSGD's and TernGrad's integer
// levels do not add up under an allreduce, so they are gathered: every rank's payload is
// allgathered and decoded into the sum (Aggregation::kGather, fixed size per shape).
//
// qsgd:levels=S,bucket=B (Alistarh et al. 2017): each bucket of B consecutive elements (B = 0:
//   the whole tensor) is sent as its f32 L2 norm and, per element, a sign and a level l in [0, S]
//   rounded stochastically from a = |x| / norm * S, so E[l] = a; decoded as sign * l * norm / S,
//   with variance (norm / S)^2 f (1 - f), f = a - floor(a).
//   Payload: [nb x f32 norm][n codes of w = ceil(log2(S + 1)) + 1 bits: the level in the low bits,
//   the sign on top; element i at bits [i w, (i + 1) w) of the payload read LSB first].
//   Cost model: 4 nb + ceil(n w / 8) bytes per rank through one allgather, nb = ceil(n / B);
//   S = 15, B = 512: 5.06 bits per element, 6.3x less than f32.
// terngrad:clip=C (Wen et al. 2017): s = max |x| over the tensor (of x clipped to C standard
//   deviations when C > 0), and each element becomes s * sign(x) * b, b ~ Bernoulli(|x| / s):
//   unbiased without clipping (variance s |x| - x^2); clipping trades a bias for less variance.
//   Payload: [f32 s][n 2-bit codes (0: zero, 1: +s, 2: -s), four per byte, LSB first].
//   Cost model: 4 + ceil(n / 4) bytes per rank through one allgather (16x less than f32).
//
// Stochastic rounding draws from Rng(seed, step, tensor name, kStochasticRounding): two 24-bit
// uniforms u per 64-bit draw, a block at a time, so that the arithmetic loops vectorize. With
// 24-bit uniforms P(u < f) = ceil(f 2^24) / 2^24: a bias below 2^-24 of one level.
// The kernels are single streaming passes (QSGD's norm pass reads a bucket that the quantizing pass
// then finds in cache; TernGrad needs the tensor's maximum first, so it reads the tensor twice).
#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "compress/bytes.h"
#include "compress/compressor_base.h"
#include "compress/randomk.h"
#include "compress/registry.h"
#include "compress/rng.h"

namespace frugal {
namespace {

static_assert(std::endian::native == std::endian::little, "bit packing assumes little-endian");

__extension__ using Uint128 = unsigned __int128;  // GCC/Clang builtin; -Wpedantic needs the mark

// Elements per block of uniforms and codes: 2048 keeps both arrays (8 KiB + 4 KiB) in L1, and a
// multiple of 8 keeps QSGD's 8-element bit groups and TernGrad's 4-element bytes inside a block.
constexpr size_t kBlock = 2048;

#define QUANTIZER_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))

// Two uniforms in [0, 1) with 24 bits each per 64-bit draw (exact in f32).
void fill_uniforms(Rng& rng, float* u, size_t n) {
  size_t i = 0;
  for (; i + 2 <= n; i += 2) {
    const uint64_t r = rng.next();
    u[i] = static_cast<float>(r >> 40) * 0x1.0p-24f;
    u[i + 1] = static_cast<float>(r & 0xFFFFFFu) * 0x1.0p-24f;
  }
  if (i < n) u[i] = static_cast<float>(rng.next() >> 40) * 0x1.0p-24f;
}

// Sum of squares in f64: exact enough for whole-tensor norms, and never overflows for finite f32
// values, so a non-finite result means a NaN or Inf in x. Independent lanes let it vectorize.
QUANTIZER_KERNEL double sum_squares(const float* x, size_t n) {
  constexpr size_t kLanes = 16;
  double lanes[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) {
      const double v = x[i + j];
      lanes[j] += v * v;
    }
  }
  for (; i < n; ++i) lanes[0] += static_cast<double>(x[i]) * x[i];
  double sum = 0;
  for (double lane : lanes) sum += lane;
  return sum;
}

// QSGD's code of each element: level round_stochastic(|x| / norm * levels) (at most levels) and
// the sign bit at `sign_shift`. REQUIRES: norm > 0 and finite.
QUANTIZER_KERNEL void qsgd_codes(const float* x, const float* u, size_t n, float norm,
                                 int32_t levels, int sign_shift, uint16_t* codes) {
  const auto levels_f = static_cast<float>(levels);
  for (size_t i = 0; i < n; ++i) {
    const auto bits = std::bit_cast<uint32_t>(x[i]);
    const float a = std::bit_cast<float>(bits & 0x7FFFFFFFu) / norm * levels_f;
    int32_t level = static_cast<int32_t>(a);  // a >= 0: truncation is floor
    level += u[i] < a - static_cast<float>(level) ? 1 : 0;
    level = std::min(level, levels);  // a may exceed levels by an ulp of rounding
    codes[i] = static_cast<uint16_t>(static_cast<uint32_t>(level) | (bits >> 31) << sign_shift);
  }
}

// accum += sign * level * unit for each code; returns the largest level seen (for validation).
QUANTIZER_KERNEL uint32_t qsgd_accumulate(const uint16_t* codes, size_t n, float unit,
                                          int sign_shift, uint32_t level_mask, float* accum) {
  uint32_t max_level = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t code = codes[i];
    const uint32_t level = code & level_mask;
    const float value = static_cast<float>(static_cast<int32_t>(level)) * unit;
    accum[i] += std::bit_cast<float>(std::bit_cast<uint32_t>(value) ^ (code >> sign_shift) << 31);
    max_level = std::max(max_level, level);
  }
  return max_level;
}

// Packs count `width`-bit codes, 8 per group of `width` bytes, at `out`. Groups are written in
// order with whole-Word stores that may spill zeros into the next group (rewritten next) but never
// past `end`. Word holds 8 codes: uint64_t for width <= 8, Uint128 up to 16.
// REQUIRES: codes[count, round_up(count, 8)) are zero.
template <typename Word>
void pack_codes(const uint16_t* codes, size_t count, int width, std::byte* out,
                const std::byte* end) {
  for (size_t g = 0; g * 8 < count; ++g) {
    Word word = 0;
    for (int j = 0; j < 8; ++j) word |= static_cast<Word>(codes[8 * g + j]) << (j * width);
    std::byte* p = out + g * static_cast<size_t>(width);
    std::memcpy(p, &word, std::min(sizeof(Word), static_cast<size_t>(end - p)));
  }
}

// The inverse of pack_codes; writes round_up(count, 8) codes.
template <typename Word>
void unpack_codes(const std::byte* in, const std::byte* end, size_t count, int width,
                  uint16_t* codes) {
  const Word mask = (Word{1} << width) - 1;
  for (size_t g = 0; g * 8 < count; ++g) {
    Word word = 0;
    const std::byte* p = in + g * static_cast<size_t>(width);
    std::memcpy(&word, p, std::min(sizeof(Word), static_cast<size_t>(end - p)));
    for (int j = 0; j < 8; ++j)
      codes[8 * g + j] = static_cast<uint16_t>((word >> (j * width)) & mask);
  }
}

class QsgdCompressor final : public CompressorBase {
 public:
  QsgdCompressor(const CompressorContext& context, int32_t levels, int64_t bucket)
      : CompressorBase(context),
        levels_(levels),
        bucket_(bucket),
        level_bits_(std::bit_width(static_cast<uint32_t>(levels))),
        width_(level_bits_ + 1) {}

  std::string spec() const override {
    return "qsgd:levels=" + format_param(levels_) + ",bucket=" + format_param(bucket_);
  }
  Aggregation aggregation() const override { return Aggregation::kGather; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    const auto n = static_cast<size_t>(numel(id));
    return 4 * num_buckets(n) + (n * static_cast<size_t>(width_) + 7) / 8;
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    const size_t bytes = max_compressed_bytes(id);
    FRUGAL_CHECK(out.size() >= bytes, "output buffer too small");
    const auto n = static_cast<size_t>(numel(id));
    const auto* x = static_cast<const float*>(grad.data);
    const size_t bucket = bucket_size(n);
    const size_t buckets = num_buckets(n);
    std::byte* norms = out.data();
    std::byte* packed = out.data() + 4 * buckets;
    const std::byte* end = out.data() + bytes;
    Rng rng(context().seed, step.step, tensor(id).name, RngPurpose::kStochasticRounding);
    float u[kBlock];
    uint16_t codes[kBlock];
    size_t normed = 0;  // buckets whose norm is in the payload already
    for (size_t begin = 0; begin < n; begin += kBlock) {
      const size_t stop = std::min(n, begin + kBlock);
      // Norms of the buckets this block touches; a small bucket is still in cache below.
      for (; normed < buckets && normed * bucket < stop; ++normed) {
        const size_t first = normed * bucket;
        const double sum = sum_squares(x + first, std::min(n, first + bucket) - first);
        if (!std::isfinite(sum)) return non_finite_error(id);
        const double norm = std::sqrt(sum);
        if (norm > FLT_MAX) {
          return invalid_argument(spec() + ": gradient of tensor '" + tensor(id).name +
                                  "' has an L2 norm beyond the f32 range in bucket " +
                                  std::to_string(normed) + "; use a smaller bucket");
        }
        store(norms + 4 * normed, static_cast<float>(norm));
      }
      fill_uniforms(rng, u, stop - begin);
      for (size_t q = begin / bucket; q * bucket < stop; ++q) {
        const size_t first = std::max(begin, q * bucket);
        const size_t last = std::min(stop, (q + 1) * bucket);
        const auto norm = load<float>(norms + 4 * q);
        if (norm > 0) {
          qsgd_codes(x + first, u + (first - begin), last - first, norm, levels_, level_bits_,
                     codes + (first - begin));
        } else {
          std::fill(codes + (first - begin), codes + (last - begin), uint16_t{0});
        }
      }
      for (size_t i = stop - begin; i % 8 != 0; ++i) codes[i] = 0;
      pack(codes, stop - begin, packed + begin / 8 * static_cast<size_t>(width_), end);
    }
    return bytes;
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload, max_compressed_bytes(id)));
    const auto n = static_cast<size_t>(numel(id));
    const size_t bucket = bucket_size(n);
    const size_t buckets = num_buckets(n);
    const std::byte* norms = payload.data();
    for (size_t q = 0; q < buckets; ++q) {
      const auto norm = load<float>(norms + 4 * q);
      if (!(norm >= 0 && norm <= FLT_MAX)) {
        return corrupt_payload(id, "bucket " + std::to_string(q) + " has norm " +
                                       std::to_string(norm) + "; norms are finite and >= 0");
      }
    }
    const std::byte* packed = payload.data() + 4 * buckets;
    const std::byte* end = payload.data() + payload.size();
    float* out = accum.typed<float>().data();
    const uint32_t level_mask = (uint32_t{1} << level_bits_) - 1;
    uint16_t codes[kBlock];
    uint32_t max_level = 0;
    for (size_t begin = 0; begin < n; begin += kBlock) {
      const size_t stop = std::min(n, begin + kBlock);
      unpack(packed + begin / 8 * static_cast<size_t>(width_), end, stop - begin, codes);
      for (size_t q = begin / bucket; q * bucket < stop; ++q) {
        const size_t first = std::max(begin, q * bucket);
        const size_t last = std::min(stop, (q + 1) * bucket);
        const float unit = load<float>(norms + 4 * q) / static_cast<float>(levels_);
        max_level = std::max(max_level, qsgd_accumulate(codes + (first - begin), last - first, unit,
                                                        level_bits_, level_mask, out + first));
      }
    }
    // Checked after the fact: the accumulator then holds finite garbage, as for any DataLoss.
    if (max_level > static_cast<uint32_t>(levels_)) {
      return corrupt_payload(
          id, "level " + std::to_string(max_level) + " exceeds levels=" + std::to_string(levels_));
    }
    return Status::ok();
  }

 private:
  size_t bucket_size(size_t n) const {
    return bucket_ == 0 ? std::max<size_t>(n, 1) : static_cast<size_t>(bucket_);
  }
  size_t num_buckets(size_t n) const { return (n + bucket_size(n) - 1) / bucket_size(n); }

  void pack(const uint16_t* codes, size_t count, std::byte* out, const std::byte* end) const {
    if (width_ <= 8) {
      pack_codes<uint64_t>(codes, count, width_, out, end);
    } else {
      pack_codes<Uint128>(codes, count, width_, out, end);
    }
  }
  void unpack(const std::byte* in, const std::byte* end, size_t count, uint16_t* codes) const {
    if (width_ <= 8) {
      unpack_codes<uint64_t>(in, end, count, width_, codes);
    } else {
      unpack_codes<Uint128>(in, end, count, width_, codes);
    }
  }

  int32_t levels_;
  int64_t bucket_;
  int level_bits_;  // ceil(log2(levels + 1))
  int width_;       // bits per element: level and sign
};

// The largest |x| as its bit pattern (>= 0x7F800000: some value is Inf or NaN).
QUANTIZER_KERNEL uint32_t max_abs_bits(const float* x, size_t n) {
  uint32_t max_bits = 0;
  for (size_t i = 0; i < n; ++i) {
    max_bits = std::max(max_bits, std::bit_cast<uint32_t>(x[i]) & 0x7FFFFFFFu);
  }
  return max_bits;
}

// Sum and sum of squares in f64 (TernGrad's clipping needs the standard deviation).
QUANTIZER_KERNEL void moments(const float* x, size_t n, double* sum_out, double* sum_squares_out) {
  constexpr size_t kLanes = 8;
  double sum[kLanes] = {};
  double squares[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) {
      const double v = x[i + j];
      sum[j] += v;
      squares[j] += v * v;
    }
  }
  for (; i < n; ++i) {
    sum[0] += x[i];
    squares[0] += static_cast<double>(x[i]) * x[i];
  }
  *sum_out = 0;
  *sum_squares_out = 0;
  for (size_t j = 0; j < kLanes; ++j) {
    *sum_out += sum[j];
    *sum_squares_out += squares[j];
  }
}

// TernGrad's 2-bit code of each element: 0, or 1 (+s) / 2 (-s) with probability min(|x|, s) / s.
// REQUIRES: s > 0 and finite.
QUANTIZER_KERNEL void terngrad_codes(const float* x, const float* u, size_t n, float s,
                                     uint8_t* codes) {
  for (size_t i = 0; i < n; ++i) {
    const auto bits = std::bit_cast<uint32_t>(x[i]);
    const float p = std::min(std::bit_cast<float>(bits & 0x7FFFFFFFu), s) / s;
    codes[i] = static_cast<uint8_t>(u[i] < p ? 1 + (bits >> 31) : 0);
  }
}

QUANTIZER_KERNEL void pack_pairs(const uint8_t* codes, size_t bytes, uint8_t* out) {
  for (size_t j = 0; j < bytes; ++j) {
    out[j] = static_cast<uint8_t>(codes[4 * j] | codes[4 * j + 1] << 2 | codes[4 * j + 2] << 4 |
                                  codes[4 * j + 3] << 6);
  }
}

// accum += s * {0, +1, -1} per 2-bit code of `packed` (n codes); returns nonzero when a code is 3.
QUANTIZER_KERNEL uint32_t terngrad_accumulate(const uint8_t* packed, size_t n, float s,
                                              float* accum) {
  uint32_t bad = 0;
  for (size_t j = 0; j < n / 4; ++j) {
    const uint32_t byte = packed[j];
    for (uint32_t q = 0; q < 4; ++q) {
      const uint32_t code = (byte >> (2 * q)) & 3;
      accum[4 * j + q] +=
          s * static_cast<float>(static_cast<int32_t>(code & 1) - static_cast<int32_t>(code >> 1));
      bad |= code & (code >> 1);
    }
  }
  for (size_t i = n / 4 * 4; i < n; ++i) {
    const uint32_t code = (static_cast<uint32_t>(packed[i / 4]) >> (2 * (i % 4))) & 3;
    accum[i] +=
        s * static_cast<float>(static_cast<int32_t>(code & 1) - static_cast<int32_t>(code >> 1));
    bad |= code & (code >> 1);
  }
  return bad;
}

class TernGradCompressor final : public CompressorBase {
 public:
  TernGradCompressor(const CompressorContext& context, double clip)
      : CompressorBase(context), clip_(clip) {}

  std::string spec() const override { return "terngrad:clip=" + format_param(clip_); }
  Aggregation aggregation() const override { return Aggregation::kGather; }
  bool fixed_size() const override { return true; }
  size_t max_compressed_bytes(TensorId id) const override {
    return 4 + (static_cast<size_t>(numel(id)) + 3) / 4;
  }

  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, grad, "gradient"));
    const size_t bytes = max_compressed_bytes(id);
    FRUGAL_CHECK(out.size() >= bytes, "output buffer too small");
    const auto n = static_cast<size_t>(numel(id));
    const auto* x = static_cast<const float*>(grad.data);
    const uint32_t max_bits = max_abs_bits(x, n);
    if (max_bits >= 0x7F800000u) return non_finite_error(id);
    auto s = std::bit_cast<float>(max_bits);
    if (clip_ > 0 && n > 0) {
      double sum = 0;
      double squares = 0;
      moments(x, n, &sum, &squares);
      const double mean = sum / static_cast<double>(n);
      const double sigma = std::sqrt(std::max(0.0, squares / static_cast<double>(n) - mean * mean));
      // A constant tensor (sigma = 0) is not clipped to nothing.
      if (sigma > 0) s = std::min(s, static_cast<float>(clip_ * sigma));
    }
    store(out.data(), s);
    auto* packed = reinterpret_cast<uint8_t*>(out.data() + 4);
    if (s == 0) {
      std::fill(packed, packed + (bytes - 4), uint8_t{0});
      return bytes;
    }
    Rng rng(context().seed, step.step, tensor(id).name, RngPurpose::kStochasticRounding);
    float u[kBlock];
    uint8_t codes[kBlock];
    for (size_t begin = 0; begin < n; begin += kBlock) {
      const size_t count = std::min(n - begin, kBlock);
      fill_uniforms(rng, u, count);
      terngrad_codes(x + begin, u, count, s, codes);
      for (size_t i = count; i % 4 != 0; ++i) codes[i] = 0;
      pack_pairs(codes, (count + 3) / 4, packed + begin / 4);
    }
    return bytes;
  }

  Status decompress_accumulate(TensorId id, ConstBytes payload, MutableView accum) override {
    FRUGAL_RETURN_IF_ERROR(check_view(id, accum, "accumulator"));
    FRUGAL_RETURN_IF_ERROR(check_payload_size(id, payload, max_compressed_bytes(id)));
    const auto s = load<float>(payload.data());
    if (!(s >= 0 && s <= FLT_MAX)) {
      return corrupt_payload(id, "scale " + std::to_string(s) + " is not finite and >= 0");
    }
    const auto* packed = reinterpret_cast<const uint8_t*>(payload.data() + 4);
    auto out = accum.typed<float>();
    // Checked after the fact: the accumulator then holds finite garbage, as for any DataLoss.
    if (terngrad_accumulate(packed, out.size(), s, out.data()) != 0) {
      return corrupt_payload(id, "a 2-bit code is 3; valid codes are 0, 1 and 2");
    }
    return Status::ok();
  }

 private:
  double clip_;
};

Result<std::unique_ptr<Compressor>> make_qsgd(const BuildRequest& request) {
  FRUGAL_ASSIGN_OR_RETURN(int64_t levels, request.params.integer("levels", 15, 1, 32767));
  FRUGAL_ASSIGN_OR_RETURN(int64_t bucket,
                          request.params.integer("bucket", 512, 0, int64_t{1} << 40));
  if (request.value_dtype != DType::kF32) {
    return invalid_argument(
        "qsgd sends bit-packed levels; it cannot be wrapped in fp16(...) or "
        "bf16(...)");
  }
  return std::unique_ptr<Compressor>(
      new QsgdCompressor(request.context, static_cast<int32_t>(levels), bucket));
}

Result<std::unique_ptr<Compressor>> make_terngrad(const BuildRequest& request) {
  FRUGAL_ASSIGN_OR_RETURN(double clip, request.params.real("clip", 0.0, 0.0, 1000.0));
  if (request.value_dtype != DType::kF32) {
    return invalid_argument(
        "terngrad sends 2-bit codes; it cannot be wrapped in fp16(...) or "
        "bf16(...)");
  }
  return std::unique_ptr<Compressor>(new TernGradCompressor(request.context, clip));
}

}  // namespace

std::vector<CompressorEntry> quantizer_compressor_entries() {
  std::vector<CompressorEntry> entries = randomk_compressor_entries();
  entries.push_back(
      {"qsgd",
       "QSGD: per bucket, the f32 L2 norm and per element a sign and a level in 0..levels, "
       "rounded stochastically (unbiased) and bit-packed; gathered",
       {{"levels", "15",
         "quantization levels S, 1 <= levels <= 32767; ceil(log2(S+1)) + 1 bits per element"},
        {"bucket", "512",
         "elements per bucket sharing one norm, 0 <= bucket <= 2^40; 0 = the whole tensor"}},
       InnerSpec::kNone,
       {"qsgd:levels=15", "qsgd:levels=127,bucket=0"},
       make_qsgd});
  entries.push_back(
      {"terngrad",
       "TernGrad: the f32 max |x| and per element a stochastic ternary {-1, 0, +1} (unbiased), "
       "2 bits per element; gathered",
       {{"clip", "0",
         "clip elements to clip standard deviations before quantizing (the paper uses 2.5; "
         "biased), 0 <= clip <= 1000; 0 = off"}},
       InnerSpec::kNone,
       {"terngrad", "terngrad:clip=2.5"},
       make_terngrad});
  return entries;
}

}  // namespace frugal
