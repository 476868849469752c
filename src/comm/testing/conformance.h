// The backend conformance suite: each function checks one operation on the calling rank against
// a serial reference computed from the same deterministic per-rank inputs, with gtest EXPECTs.
// Call each on every rank of a communicator (threads or processes) at the same time.
#pragma once

#include <cstddef>

#include "comm/communicator.h"

namespace frugal::testing {

// Deterministic contribution of `rank` at element i, small integers so f32 sums are exact.
float rank_value(int rank, size_t i);

void check_allreduce(Communicator& comm, DType dtype, ReduceOp op, size_t count);
void check_allgather(Communicator& comm, size_t bytes_per_rank);
// Rank r contributes (r * stride + offset) % modulus bytes (zero allowed, uneven counts).
void check_allgatherv(Communicator& comm, size_t stride, size_t offset, size_t modulus);
void check_broadcast(Communicator& comm, size_t bytes, int root);
void check_alltoallv(Communicator& comm, size_t base_bytes);
void check_barrier(Communicator& comm);
// Splits by rank parity, runs allreduce/allgatherv on both halves concurrently with a different
// pattern, then checks the parent still works.
void check_split(Communicator& comm);

// Everything above over the sizes of the suite: odd sizes, zero-length, and (if large) >= 64 MiB.
void check_all_operations(Communicator& comm, bool include_large);

}  // namespace frugal::testing
