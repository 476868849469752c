#include "comm/testing/conformance.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

namespace frugal::testing {
namespace {

uint8_t byte_pattern(int a, int b, size_t i) {
  return static_cast<uint8_t>((a * 31 + b * 17 + static_cast<int>(i % 251) * 7) & 0xff);
}

// Fractional value that is exactly representable in f16/bf16 after one rounding of the input.
float fractional_value(int rank, size_t i) {
  return static_cast<float>((rank + 1) * 0.173 + static_cast<double>(i % 97) * 0.0113 - 0.5);
}

void store(std::vector<std::byte>& buf, DType dtype, size_t i, double value) {
  std::byte* p = buf.data() + i * dtype_size(dtype);
  switch (dtype) {
    case DType::kF32: {
      float v = static_cast<float>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case DType::kF64:
      std::memcpy(p, &value, 8);
      return;
    case DType::kF16: {
      uint16_t h = f32_to_f16(static_cast<float>(value));
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kBF16: {
      uint16_t h = f32_to_bf16(static_cast<float>(value));
      std::memcpy(p, &h, 2);
      return;
    }
    case DType::kI32: {
      int32_t v = static_cast<int32_t>(value);
      std::memcpy(p, &v, 4);
      return;
    }
    case DType::kI64: {
      int64_t v = static_cast<int64_t>(value);
      std::memcpy(p, &v, 8);
      return;
    }
    case DType::kU8: {
      uint8_t v = static_cast<uint8_t>(value);
      std::memcpy(p, &v, 1);
      return;
    }
  }
}

double load(const std::vector<std::byte>& buf, DType dtype, size_t i) {
  const std::byte* p = buf.data() + i * dtype_size(dtype);
  switch (dtype) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::kF64: {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    case DType::kF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return f16_to_f32(h);
    }
    case DType::kBF16: {
      uint16_t h;
      std::memcpy(&h, p, 2);
      return bf16_to_f32(h);
    }
    case DType::kI32: {
      int32_t v;
      std::memcpy(&v, p, 4);
      return v;
    }
    case DType::kI64: {
      int64_t v;
      std::memcpy(&v, p, 8);
      return static_cast<double>(v);
    }
    case DType::kU8: {
      uint8_t v;
      std::memcpy(&v, p, 1);
      return v;
    }
  }
  return 0;
}

// The input of `rank` at element i, as stored in `dtype` (so the reference uses the same values).
double input_value(int rank, size_t i, DType dtype) {
  std::vector<std::byte> one(dtype_size(dtype));
  bool half = dtype == DType::kF16 || dtype == DType::kBF16;
  double raw = dtype == DType::kU8 ? (rank_value(rank, i) + 8) / 4  // sums stay below 256
               : half              ? fractional_value(rank, i)
                                   : rank_value(rank, i);
  store(one, dtype, 0, raw);
  return load(one, dtype, 0);
}

// Compares `length` bytes with memcmp (fast for 64 MiB buffers) and reports the first mismatch.
void expect_bytes(const uint8_t* actual, const std::vector<uint8_t>& expected, size_t at,
                  const std::string& what) {
  if (expected.empty() || std::memcmp(actual + at, expected.data(), expected.size()) == 0) return;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (actual[at + i] != expected[i]) {
      ADD_FAILURE() << what << ": byte " << i << " is " << int(actual[at + i]) << ", expected "
                    << int(expected[i]);
      return;
    }
  }
}

std::vector<uint8_t> pattern(int a, int b, size_t n) {
  std::vector<uint8_t> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = byte_pattern(a, b, i);
  return out;
}

}  // namespace

float rank_value(int rank, size_t i) {
  return static_cast<float>(static_cast<int>((rank * 7 + i * 3) % 17) - 8);
}

void check_allreduce(Communicator& comm, DType dtype, ReduceOp op, size_t count) {
  SCOPED_TRACE("allreduce " + std::string(dtype_name(dtype)) + " " +
               std::string(reduce_op_name(op)) + " x " + std::to_string(count) + " on rank " +
               std::to_string(comm.rank()) + "/" + std::to_string(comm.size()));
  std::vector<std::byte> buf(count * dtype_size(dtype));
  for (size_t i = 0; i < count; ++i) store(buf, dtype, i, input_value(comm.rank(), i, dtype));
  MutableView view{buf.data(), dtype, {static_cast<int64_t>(count)}};
  Status status = comm.allreduce(view, op);
  ASSERT_TRUE(status.is_ok()) << status.to_string();

  const bool half = dtype == DType::kF16 || dtype == DType::kBF16;
  const double eps = dtype == DType::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
  size_t mismatches = 0;
  for (size_t i = 0; i < count && mismatches < 5; ++i) {
    double expected = input_value(0, i, dtype), magnitude = std::abs(expected);
    for (int r = 1; r < comm.size(); ++r) {
      double v = input_value(r, i, dtype);
      magnitude += std::abs(v);
      if (op == ReduceOp::kMax)
        expected = std::max(expected, v);
      else if (op == ReduceOp::kMin)
        expected = std::min(expected, v);
      else
        expected += v;
    }
    if (op == ReduceOp::kAvg) {
      expected /= comm.size();
      magnitude /= comm.size();
    }
    double actual = load(buf, dtype, i);
    // Integer-valued inputs make f32/f64/int sums exact; avg divides once (one rounding);
    // f16/bf16 allow one rounding per reduction step (documented in communicator.h).
    double tolerance = half                   ? comm.size() * eps * magnitude
                       : op == ReduceOp::kAvg ? 1e-6 * std::max(1.0, magnitude)
                                              : 0.0;
    if (std::abs(actual - expected) > tolerance) {
      ++mismatches;
      ADD_FAILURE() << "element " << i << ": got " << actual << ", expected " << expected
                    << " (tolerance " << tolerance << ")";
    }
  }
}

void check_allgather(Communicator& comm, size_t bytes_per_rank) {
  SCOPED_TRACE("allgather " + std::to_string(bytes_per_rank) + " bytes/rank on rank " +
               std::to_string(comm.rank()) + "/" + std::to_string(comm.size()));
  std::vector<uint8_t> in(bytes_per_rank), out(bytes_per_rank * comm.size(), 0xEE);
  for (size_t i = 0; i < in.size(); ++i) in[i] = byte_pattern(comm.rank(), 1, i);
  Status status = comm.allgather(bytes_of(std::as_const(in)), bytes_of(out));
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  for (int r = 0; r < comm.size(); ++r) {
    expect_bytes(out.data(), pattern(r, 1, bytes_per_rank), r * bytes_per_rank,
                 "from rank " + std::to_string(r));
  }
}

void check_allgatherv(Communicator& comm, size_t stride, size_t offset, size_t modulus) {
  std::vector<size_t> counts(comm.size());
  for (int r = 0; r < comm.size(); ++r) counts[r] = (r * stride + offset) % modulus;
  SCOPED_TRACE("allgatherv counts[0]=" + std::to_string(counts[0]) + " on rank " +
               std::to_string(comm.rank()) + "/" + std::to_string(comm.size()));
  std::vector<uint8_t> in(counts[comm.rank()]);
  for (size_t i = 0; i < in.size(); ++i) in[i] = byte_pattern(comm.rank(), 2, i);
  std::vector<uint8_t> out(std::accumulate(counts.begin(), counts.end(), size_t{0}), 0xEE);
  Status status = comm.allgatherv(bytes_of(std::as_const(in)), counts, bytes_of(out));
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  size_t at = 0;
  for (int r = 0; r < comm.size(); ++r) {
    expect_bytes(out.data(), pattern(r, 2, counts[r]), at, "from rank " + std::to_string(r));
    at += counts[r];
  }
}

void check_broadcast(Communicator& comm, size_t bytes, int root) {
  SCOPED_TRACE("broadcast " + std::to_string(bytes) + " bytes from " + std::to_string(root) +
               " on rank " + std::to_string(comm.rank()) + "/" + std::to_string(comm.size()));
  std::vector<uint8_t> buf(bytes);
  for (size_t i = 0; i < bytes; ++i) buf[i] = byte_pattern(comm.rank(), 3, i);
  Status status = comm.broadcast(bytes_of(buf), root);
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  expect_bytes(buf.data(), pattern(root, 3, bytes), 0, "from root");
}

void check_alltoallv(Communicator& comm, size_t base_bytes) {
  const int n = comm.size(), me = comm.rank();
  auto bytes_between = [&](int from, int to) {
    return (base_bytes + from * 3 + to * 5) % (base_bytes + 7);
  };
  SCOPED_TRACE("alltoallv base " + std::to_string(base_bytes) + " on rank " + std::to_string(me) +
               "/" + std::to_string(n));
  std::vector<size_t> send_counts(n), recv_counts(n);
  std::vector<uint8_t> in;
  for (int to = 0; to < n; ++to) {
    send_counts[to] = bytes_between(me, to);
    recv_counts[to] = bytes_between(to, me);
    for (size_t k = 0; k < send_counts[to]; ++k) in.push_back(byte_pattern(me, to, k));
  }
  std::vector<uint8_t> out(std::accumulate(recv_counts.begin(), recv_counts.end(), size_t{0}),
                           0xEE);
  Status status =
      comm.alltoallv(bytes_of(std::as_const(in)), send_counts, bytes_of(out), recv_counts);
  ASSERT_TRUE(status.is_ok()) << status.to_string();
  size_t at = 0;
  for (int from = 0; from < n; ++from) {
    expect_bytes(out.data(), pattern(from, me, recv_counts[from]), at,
                 "from rank " + std::to_string(from));
    at += recv_counts[from];
  }
}

void check_barrier(Communicator& comm) {
  Status status = comm.barrier();
  ASSERT_TRUE(status.is_ok()) << status.to_string();
}

void check_split(Communicator& comm) {
  const int color = comm.rank() % 2;
  auto made = comm.split(color, /*key=*/-comm.rank());  // reversed order within each color
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  Communicator& child = *made.value();
  std::vector<int> members;
  for (int r = comm.size() - 1; r >= 0; --r) {
    if (r % 2 == color) members.push_back(r);
  }
  ASSERT_EQ(child.size(), static_cast<int>(members.size()));
  ASSERT_EQ(members[child.rank()], comm.rank());

  // Interleave child and parent operations: they must not interfere.
  for (int round = 0; round < 3; ++round) {
    std::vector<int32_t> values(1000 + color * 17, comm.rank() + 1);
    MutableView view{values.data(), DType::kI32, {static_cast<int64_t>(values.size())}};
    Status status = child.allreduce(view, ReduceOp::kSum);
    ASSERT_TRUE(status.is_ok()) << status.to_string();
    int32_t expected = 0;
    for (int m : members) expected += m + 1;
    for (int32_t v : values) ASSERT_EQ(v, expected);
    check_allgatherv(child, 5 + color, round, 11);
    check_allreduce(comm, DType::kF32, ReduceOp::kSum, 513);
  }
}

void check_all_operations(Communicator& comm, bool include_large) {
  for (DType dtype : {DType::kF32, DType::kF64, DType::kF16, DType::kBF16, DType::kI32, DType::kI64,
                      DType::kU8}) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin}) {
      check_allreduce(comm, dtype, op, 1031);
    }
    if (is_floating(dtype)) check_allreduce(comm, dtype, ReduceOp::kAvg, 1031);
  }
  for (size_t count : {size_t{0}, size_t{1}, size_t{7}, size_t{100'003}}) {
    check_allreduce(comm, DType::kF32, ReduceOp::kSum, count);
    check_allreduce(comm, DType::kF16, ReduceOp::kSum, count);
    check_allgather(comm, count);
    check_broadcast(comm, count, comm.size() - 1);
  }
  check_allgatherv(comm, 3, 0, 5);         // rank 0 sends nothing
  check_allgatherv(comm, 1000, 17, 4099);  // uneven
  check_allgatherv(comm, 0, 0, 1);         // everyone sends nothing
  check_alltoallv(comm, 0);
  check_alltoallv(comm, 4001);
  check_barrier(comm);
  check_split(comm);
  if (include_large) {
    check_allreduce(comm, DType::kF32, ReduceOp::kSum, 16u << 20);  // 64 MiB
    check_allgatherv(comm, 1, 64u << 20, UINT32_MAX);               // 64 MiB + r bytes each
  }
}

}  // namespace frugal::testing
