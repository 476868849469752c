#include "engine/compressed_exchange.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

#include "compress/sparse_payload.h"
#include "core/clock.h"
#include "core/elementwise.h"

namespace frugal {
namespace {

void zero(MutableView view) { std::memset(view.data, 0, view.bytes()); }

// unit.target = what the one `payload` decodes to / divisor: kSum's reduced payload, or
// kTwoPhase's assembled chunks.
Status decode_one(Compressor& compressor, const CompressedUnit& unit, ConstBytes payload,
                  float divisor) {
  zero(unit.target);
  FRUGAL_RETURN_IF_ERROR(compressor.decompress_accumulate(unit.unit, payload, unit.target));
  divide_floats(static_cast<float*>(unit.target.data), static_cast<size_t>(unit.target.numel()),
                divisor);
  return Status::ok();
}

int64_t numel_of(const MutableView& view) { return view.numel(); }

void write_u32(std::byte* out, uint32_t value) { std::memcpy(out, &value, sizeof(value)); }
uint32_t read_u32(const std::byte* in) {
  uint32_t value = 0;
  std::memcpy(&value, in, sizeof(value));
  return value;
}

// target[i] += the i-th f32 of `source`, which may be unaligned (blocks of a gather start at
// arbitrary byte offsets).
void add_floats(float* target, const std::byte* source, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    float value;
    std::memcpy(&value, source + i * sizeof(float), sizeof(float));
    target[i] += value;
  }
}

void ensure(std::vector<std::byte>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
}

}  // namespace

CompressedExchange::CompressedExchange(Communicator& comm, Compressor& compressor,
                                       Timeline* timeline, int lane)
    : comm_(comm), compressor_(compressor), timeline_(timeline), lane_(lane) {}

template <typename Collective>
Status CompressedExchange::timed(const char* what, ExchangeCounters& counters,
                                 Collective&& collective) {
  const int64_t start = now_us();
  Status status = collective();
  counters.comm_us += now_us() - start;
  if (!status.is_ok()) {
    return status.with_context(std::string(what) + " of compressed payloads (" +
                               compressor_.spec() + ") on rank " + std::to_string(comm_.rank()));
  }
  return Status::ok();
}

Status CompressedExchange::exchange(std::span<const CompressedUnit> units, const StepInfo& step,
                                    ExchangeCounters& counters, float divisor,
                                    MutableView riding_dense) {
  if (units.empty()) return Status::ok();
  if (riding_dense.data != nullptr && compressor_.aggregation() != Aggregation::kGather) {
    return internal_error("dense tensors can ride only in a gather, not with " +
                          compressor_.spec());
  }
  switch (compressor_.aggregation()) {
    case Aggregation::kGather:
      return gather(units, divisor, riding_dense, counters);
    case Aggregation::kSum:
      return sum(units, step, divisor, counters);
    case Aggregation::kTwoPhase:
      return two_phase(units, step, divisor, counters);
  }
  return internal_error("unknown aggregation");
}

Status CompressedExchange::gather(std::span<const CompressedUnit> units, float divisor,
                                  MutableView riding_dense, ExchangeCounters& counters) {
  const int n = comm_.size();
  const bool fixed = compressor_.fixed_size();
  // A rank's block: [u32 size per unit][payloads][riding dense f32 values]. Variable sizes
  // travel in the header so receivers can split each block; fixed sizes are known to everyone
  // (max_compressed_bytes) and need none.
  const size_t header = fixed ? 0 : units.size() * sizeof(uint32_t);
  const size_t dense_bytes = riding_dense.data == nullptr ? 0 : riding_dense.bytes();
  size_t own = header + dense_bytes;
  for (const CompressedUnit& u : units) own += u.payload.size();
  ensure(send_, own);
  size_t offset = header;
  for (size_t i = 0; i < units.size(); ++i) {
    const ConstBytes payload = units[i].payload;
    if (fixed && payload.size() != compressor_.max_compressed_bytes(units[i].unit)) {
      return internal_error("compressor " + compressor_.spec() +
                            " claims fixed-size payloads but returned " +
                            std::to_string(payload.size()) + " bytes for '" +
                            compressor_.tensor(units[i].unit).name + "'");
    }
    if (!fixed)
      write_u32(send_.data() + i * sizeof(uint32_t), static_cast<uint32_t>(payload.size()));
    std::memcpy(send_.data() + offset, payload.data(), payload.size());
    offset += payload.size();
  }
  if (dense_bytes > 0) std::memcpy(send_.data() + offset, riding_dense.data, dense_bytes);
  const ConstBytes mine(send_.data(), own);

  std::vector<size_t> counts(static_cast<size_t>(n), own);
  if (!fixed) {
    uint64_t own_count = own;
    std::vector<uint64_t> all(static_cast<size_t>(n));
    FRUGAL_RETURN_IF_ERROR(timed("allgather of payload sizes", counters, [&] {
      return comm_.allgather(
          ConstBytes(reinterpret_cast<const std::byte*>(&own_count), 8),
          MutableBytes(reinterpret_cast<std::byte*>(all.data()), 8 * all.size()));
    }));
    counters.bytes_sent += 8 * (n - 1);
    counters.bytes_received += 8 * (n - 1);
    for (int r = 0; r < n; ++r) counts[static_cast<size_t>(r)] = all[static_cast<size_t>(r)];
  }
  const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
  ensure(recv_, total);
  const MutableBytes out(recv_.data(), total);
  FRUGAL_RETURN_IF_ERROR(timed(fixed ? "allgather" : "allgatherv", counters, [&] {
    return fixed ? comm_.allgather(mine, out) : comm_.allgatherv(mine, counts, out);
  }));
  // Ring allgather: every rank receives all blocks but its own and forwards as many.
  counters.bytes_sent += static_cast<int64_t>(total - own);
  counters.bytes_received += static_cast<int64_t>(total - own);

  const int64_t decode_start = now_us();
  ScopedTraceEvent decode(timeline_, phase::kDecompress, lane_, compressor_.spec());
  // Split every rank's block (checking its layout), then decode unit by unit: each unit's n
  // payloads in one decompress_gathered, which writes its target once.
  const size_t u_count = units.size();
  std::vector<ConstBytes> payloads(u_count * static_cast<size_t>(n));  // [unit][rank]
  std::vector<const std::byte*> dense_parts(static_cast<size_t>(n));
  size_t block = 0;
  for (int r = 0; r < n; ++r) {
    const std::byte* base = recv_.data() + block;
    const size_t block_bytes = counts[static_cast<size_t>(r)];
    size_t at = header;
    for (size_t i = 0; i < u_count; ++i) {
      const size_t size = fixed ? compressor_.max_compressed_bytes(units[i].unit)
                                : read_u32(base + i * sizeof(uint32_t));
      if (at + size > block_bytes) {
        return data_loss("rank " + std::to_string(r) + "'s payload block of " +
                         std::to_string(block_bytes) + " bytes is too short for '" +
                         compressor_.tensor(units[i].unit).name + "'");
      }
      payloads[i * static_cast<size_t>(n) + static_cast<size_t>(r)] = ConstBytes(base + at, size);
      at += size;
    }
    if (at + dense_bytes != block_bytes) {
      return data_loss("rank " + std::to_string(r) + "'s payload block has " +
                       std::to_string(block_bytes) + " bytes, expected " +
                       std::to_string(at + dense_bytes));
    }
    dense_parts[static_cast<size_t>(r)] = base + at;
    block += block_bytes;
  }
  for (size_t i = 0; i < u_count; ++i) {
    const std::span<const ConstBytes> all(payloads.data() + i * static_cast<size_t>(n),
                                          static_cast<size_t>(n));
    FRUGAL_RETURN_IF_ERROR(
        compressor_.decompress_gathered(units[i].unit, all, units[i].target, divisor));
  }
  if (dense_bytes > 0) {
    zero(riding_dense);
    auto* dense = static_cast<float*>(riding_dense.data);
    for (const std::byte* part : dense_parts) add_floats(dense, part, dense_bytes / sizeof(float));
    divide_floats(dense, dense_bytes / sizeof(float), divisor);
  }
  counters.decompress_us += now_us() - decode_start;
  return Status::ok();
}

Status CompressedExchange::sum(std::span<const CompressedUnit> units, const StepInfo& step,
                               float divisor, ExchangeCounters& counters) {
  const DType dtype = compressor_.payload_dtype();
  const size_t element = dtype_size(dtype);
  const int n = comm_.size();
  // Round 0's payloads, then each next round's, live back to back in send_ (reduced in place);
  // offsets are per unit and fixed for all rounds (each unit reserves its maximum).
  std::vector<size_t> offsets(units.size()), sizes(units.size());
  size_t capacity = 0;
  for (size_t i = 0; i < units.size(); ++i) {
    offsets[i] = capacity;
    capacity += compressor_.max_compressed_bytes(units[i].unit);
  }
  ensure(send_, capacity);
  for (size_t i = 0; i < units.size(); ++i) {
    sizes[i] = units[i].payload.size();
    std::memcpy(send_.data() + offsets[i], units[i].payload.data(), sizes[i]);
  }
  const int rounds = compressor_.rounds();
  for (int round = 0; round < rounds; ++round) {
    // Compact this round's payloads so that one allreduce covers them all.
    ensure(recv_, capacity);
    size_t packed = 0;
    for (size_t i = 0; i < units.size(); ++i) {
      if (sizes[i] % element != 0) {
        return internal_error("payload of '" + compressor_.tensor(units[i].unit).name +
                              "' is not a whole number of " + std::string(dtype_name(dtype)));
      }
      std::memcpy(recv_.data() + packed, send_.data() + offsets[i], sizes[i]);
      packed += sizes[i];
    }
    MutableView reduced = flat_view(recv_.data(), dtype, static_cast<int64_t>(packed / element));
    FRUGAL_RETURN_IF_ERROR(
        timed("allreduce", counters, [&] { return comm_.allreduce(reduced, ReduceOp::kSum); }));
    const int64_t wire = ring_allreduce_bytes_per_rank(static_cast<int64_t>(packed), n);
    counters.bytes_sent += wire;
    counters.bytes_received += wire;

    const int64_t decode_start = now_us();
    ScopedTraceEvent decode(timeline_, phase::kDecompress, lane_, compressor_.spec());
    size_t at = 0;
    for (size_t i = 0; i < units.size(); ++i) {
      const ConstBytes this_unit(recv_.data() + at, sizes[i]);
      at += sizes[i];
      if (round + 1 < rounds) {
        FRUGAL_ASSIGN_OR_RETURN(
            sizes[i],
            compressor_.next_round(units[i].unit, round, this_unit,
                                   MutableBytes(send_.data() + offsets[i],
                                                compressor_.max_compressed_bytes(units[i].unit)),
                                   step));
      } else {
        FRUGAL_RETURN_IF_ERROR(decode_one(compressor_, units[i], this_unit, divisor));
      }
    }
    counters.decompress_us += now_us() - decode_start;
  }
  return Status::ok();
}

Status CompressedExchange::two_phase(std::span<const CompressedUnit> units, const StepInfo& step,
                                     float divisor, ExchangeCounters& counters) {
  const int n = comm_.size();
  const int me = comm_.rank();
  const size_t u_count = units.size();
  // chunk_bytes[i * n + c]: the payload size of unit i's chunk c (fixed by the chunk's length).
  std::vector<size_t> chunk_bytes(u_count * static_cast<size_t>(n));
  std::vector<size_t> per_rank(static_cast<size_t>(n), 0);  // bytes of every unit's chunk r
  for (size_t i = 0; i < u_count; ++i) {
    const int64_t numel = numel_of(units[i].target);
    size_t expected = 0;
    for (int c = 0; c < n; ++c) {
      const ChunkBounds bounds = chunk_bounds(numel, n, c);
      const size_t bytes = compressor_.chunk_payload_bytes(bounds.end - bounds.begin);
      chunk_bytes[i * static_cast<size_t>(n) + static_cast<size_t>(c)] = bytes;
      per_rank[static_cast<size_t>(c)] += bytes;
      expected += bytes;
    }
    if (units[i].payload.size() != expected) {
      return internal_error("two-phase payload of '" + compressor_.tensor(units[i].unit).name +
                            "' has " + std::to_string(units[i].payload.size()) +
                            " bytes, expected " + std::to_string(expected));
    }
  }
  // Phase 1: chunk c of every unit goes to rank c.
  const size_t own_total = std::accumulate(per_rank.begin(), per_rank.end(), size_t{0});
  ensure(send_, own_total);
  size_t at = 0;
  std::vector<size_t> read(u_count, 0);  // unit i's chunks before c, as c advances
  for (int c = 0; c < n; ++c) {
    for (size_t i = 0; i < u_count; ++i) {
      const size_t bytes = chunk_bytes[i * static_cast<size_t>(n) + static_cast<size_t>(c)];
      std::memcpy(send_.data() + at, units[i].payload.data() + read[i], bytes);
      read[i] += bytes;
      at += bytes;
    }
  }
  const size_t mine = per_rank[static_cast<size_t>(me)];
  std::vector<size_t> recv_counts(static_cast<size_t>(n), mine);
  ensure(recv_, mine * static_cast<size_t>(n));
  FRUGAL_RETURN_IF_ERROR(timed("alltoallv", counters, [&] {
    return comm_.alltoallv(ConstBytes(send_.data(), own_total), per_rank,
                           MutableBytes(recv_.data(), mine * static_cast<size_t>(n)), recv_counts);
  }));
  counters.bytes_sent += static_cast<int64_t>(own_total - mine);
  counters.bytes_received += static_cast<int64_t>(mine * static_cast<size_t>(n - 1));

  // Reduce my chunk of every unit.
  {
    const int64_t reduce_start = now_us();
    ScopedTraceEvent reduce(timeline_, phase::kDecompress, lane_, "reduce " + compressor_.spec());
    ensure(extra_, mine);
    size_t unit_offset = 0;
    std::vector<ConstBytes> payloads(static_cast<size_t>(n));
    for (size_t i = 0; i < u_count; ++i) {
      const size_t bytes = chunk_bytes[i * static_cast<size_t>(n) + static_cast<size_t>(me)];
      for (int r = 0; r < n; ++r) {
        payloads[static_cast<size_t>(r)] =
            ConstBytes(recv_.data() + static_cast<size_t>(r) * mine + unit_offset, bytes);
      }
      FRUGAL_RETURN_IF_ERROR(compressor_.reduce_chunk(
          units[i].unit, me, payloads, MutableBytes(extra_.data() + unit_offset, bytes), step));
      unit_offset += bytes;
    }
    counters.decompress_us += now_us() - reduce_start;
  }

  // Phase 2: everyone gathers every rank's reduced chunks.
  ensure(recv_, own_total);
  FRUGAL_RETURN_IF_ERROR(timed("allgatherv", counters, [&] {
    return comm_.allgatherv(ConstBytes(extra_.data(), mine), per_rank,
                            MutableBytes(recv_.data(), own_total));
  }));
  counters.bytes_sent += static_cast<int64_t>(own_total - mine);
  counters.bytes_received += static_cast<int64_t>(own_total - mine);

  // Reassemble each unit's n reduced chunks back to back and decode.
  const int64_t decode_start = now_us();
  ScopedTraceEvent decode(timeline_, phase::kDecompress, lane_, compressor_.spec());
  std::vector<std::byte> assembled;
  std::vector<size_t> rank_base(static_cast<size_t>(n), 0);
  for (int r = 1; r < n; ++r) {
    rank_base[static_cast<size_t>(r)] =
        rank_base[static_cast<size_t>(r - 1)] + per_rank[static_cast<size_t>(r - 1)];
  }
  std::vector<size_t> within(static_cast<size_t>(n), 0);  // offset of unit i inside rank r's block
  for (size_t i = 0; i < u_count; ++i) {
    assembled.clear();
    for (int r = 0; r < n; ++r) {
      const size_t bytes = chunk_bytes[i * static_cast<size_t>(n) + static_cast<size_t>(r)];
      const std::byte* from =
          recv_.data() + rank_base[static_cast<size_t>(r)] + within[static_cast<size_t>(r)];
      assembled.insert(assembled.end(), from, from + bytes);
      within[static_cast<size_t>(r)] += bytes;
    }
    FRUGAL_RETURN_IF_ERROR(decode_one(compressor_, units[i], assembled, divisor));
  }
  counters.decompress_us += now_us() - decode_start;
  return Status::ok();
}

Result<int> count_missing_tensors(ConstBytes payload, std::optional<DType> value_dtype,
                                  int64_t fused_numel, std::span<const int64_t> bounds_begin,
                                  std::span<const int64_t> bounds_end) {
  if (!value_dtype) return 0;
  FRUGAL_ASSIGN_OR_RETURN(SparsePayloadView view, parse_sparse(payload, *value_dtype, fused_numel));
  int missing = 0;
  int64_t entry = 0;
  for (size_t t = 0; t < bounds_begin.size(); ++t) {
    // Indices ascend, so one merge pass finds whether any falls into [begin, end).
    while (entry < view.count && view.index(entry) < bounds_begin[t]) ++entry;
    if (entry >= view.count || view.index(entry) >= bounds_end[t]) ++missing;
  }
  return missing;
}

}  // namespace frugal
