// CheckedCommunicator: a decorator that makes disagreeing ranks fail loudly. Gloo and MPI trust
// their callers: a rank passing 999 elements while the others pass 1000 gives a timeout, a
// truncation error or silently wrong sums. Before each collective, every rank allgathers a
// 48-byte descriptor of its call; all ranks then see the same table, reach the same verdict,
// and either all run the real operation or all return the same error.
//
// Cost model: one extra allgather of 48 x size() bytes per collective (latency-bound: about one
// round trip); alltoallv also allgathers its 2 x size() counts.
#include <xxhash.h>

#include <cstring>
#include <string>
#include <vector>

#include "comm/backends.h"

namespace frugal::detail {
namespace {

enum class OpCode : uint32_t {
  kAllreduce = 1,
  kAllgather,
  kAllgatherv,
  kBroadcast,
  kAlltoallv,
  kBarrier,
  kSplit
};

std::string_view op_name(OpCode op) {
  switch (op) {
    case OpCode::kAllreduce:
      return "allreduce";
    case OpCode::kAllgather:
      return "allgather";
    case OpCode::kAllgatherv:
      return "allgatherv";
    case OpCode::kBroadcast:
      return "broadcast";
    case OpCode::kAlltoallv:
      return "alltoallv";
    case OpCode::kBarrier:
      return "barrier";
    case OpCode::kSplit:
      return "split";
  }
  return "?";
}

struct Descriptor {
  uint64_t sequence = 0;
  OpCode op = OpCode::kBarrier;
  uint8_t dtype = 0;
  uint8_t reduce = 0;
  uint16_t padding = 0;
  int64_t root = 0;          // broadcast root
  uint64_t size = 0;         // elements (allreduce) or bytes per rank (allgather, broadcast)
  uint64_t counts_hash = 0;  // allgatherv counts
  uint64_t reserved = 0;
};
static_assert(sizeof(Descriptor) == 48);

bool same_call(const Descriptor& a, const Descriptor& b) {
  return a.sequence == b.sequence && a.op == b.op && a.dtype == b.dtype && a.reduce == b.reduce &&
         a.root == b.root && a.size == b.size && a.counts_hash == b.counts_hash;
}

std::string describe(const Descriptor& d) {
  std::string s = std::string(op_name(d.op)) + " #" + std::to_string(d.sequence);
  switch (d.op) {
    case OpCode::kAllreduce:
      return s + "(" + std::string(dtype_name(static_cast<DType>(d.dtype))) + " x " +
             std::to_string(d.size) + ", " +
             std::string(reduce_op_name(static_cast<ReduceOp>(d.reduce))) + ")";
    case OpCode::kAllgather:
      return s + "(" + std::to_string(d.size) + " bytes per rank)";
    case OpCode::kAllgatherv:
      return s + "(counts totalling " + std::to_string(d.size) + " bytes)";
    case OpCode::kBroadcast:
      return s + "(" + std::to_string(d.size) + " bytes from root " + std::to_string(d.root) + ")";
    default:
      return s;
  }
}

class CheckedCommunicator final : public Communicator {
 public:
  explicit CheckedCommunicator(std::unique_ptr<Communicator> inner) : inner_(std::move(inner)) {}

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string_view backend() const override { return inner_->backend(); }
  std::chrono::milliseconds timeout() const override { return inner_->timeout(); }

  Status allreduce(MutableView buf, ReduceOp op) override {
    FRUGAL_RETURN_IF_ERROR(check_allreduce_args(*this, buf, op));
    Descriptor d = next(OpCode::kAllreduce);
    d.dtype = static_cast<uint8_t>(buf.dtype);
    d.reduce = static_cast<uint8_t>(op);
    d.size = static_cast<uint64_t>(buf.numel());
    FRUGAL_RETURN_IF_ERROR(agree(d));
    return inner_->allreduce(buf, op);
  }

  Status allgather(ConstBytes in, MutableBytes out) override {
    FRUGAL_RETURN_IF_ERROR(check_allgather_args(*this, in, out));
    Descriptor d = next(OpCode::kAllgather);
    d.size = in.size();
    FRUGAL_RETURN_IF_ERROR(agree(d));
    return inner_->allgather(in, out);
  }

  Status allgatherv(ConstBytes in, std::span<const size_t> counts, MutableBytes out) override {
    FRUGAL_RETURN_IF_ERROR(check_allgatherv_args(*this, in, counts, out));
    Descriptor d = next(OpCode::kAllgatherv);
    d.size = out.size();
    d.counts_hash = XXH3_64bits(counts.data(), counts.size_bytes());
    FRUGAL_RETURN_IF_ERROR(agree(d));
    return inner_->allgatherv(in, counts, out);
  }

  Status broadcast(MutableBytes buf, int root) override {
    FRUGAL_RETURN_IF_ERROR(check_broadcast_args(*this, root));
    Descriptor d = next(OpCode::kBroadcast);
    d.size = buf.size();
    d.root = root;
    FRUGAL_RETURN_IF_ERROR(agree(d));
    return inner_->broadcast(buf, root);
  }

  Status alltoallv(ConstBytes in, std::span<const size_t> send_counts, MutableBytes out,
                   std::span<const size_t> recv_counts) override {
    FRUGAL_RETURN_IF_ERROR(check_alltoallv_args(*this, in, send_counts, out, recv_counts));
    FRUGAL_RETURN_IF_ERROR(agree(next(OpCode::kAlltoallv)));
    FRUGAL_RETURN_IF_ERROR(agree_alltoallv_counts(send_counts, recv_counts));
    return inner_->alltoallv(in, send_counts, out, recv_counts);
  }

  Status barrier() override {
    FRUGAL_RETURN_IF_ERROR(agree(next(OpCode::kBarrier)));
    return inner_->barrier();
  }

  Result<std::unique_ptr<Communicator>> split(int color, int key) override {
    FRUGAL_RETURN_IF_ERROR(check_split_args(*this, color));
    FRUGAL_RETURN_IF_ERROR(agree(next(OpCode::kSplit)));
    FRUGAL_ASSIGN_OR_RETURN(auto child, inner_->split(color, key));
    return make_checked_communicator(std::move(child));
  }

 private:
  Descriptor next(OpCode op) {
    Descriptor d;
    d.sequence = ++sequence_;
    d.op = op;
    return d;
  }

  Status agree(const Descriptor& mine) {
    std::vector<Descriptor> all(size());
    FRUGAL_RETURN_IF_ERROR(inner_->allgather(
        {reinterpret_cast<const std::byte*>(&mine), sizeof(Descriptor)},
        {reinterpret_cast<std::byte*>(all.data()), all.size() * sizeof(Descriptor)}));
    for (int r = 1; r < size(); ++r) {
      if (!same_call(all[0], all[r])) {
        return invalid_argument("ranks disagree on a collective (seen on rank " +
                                std::to_string(rank()) + "): rank 0 called " + describe(all[0]) +
                                ", rank " + std::to_string(r) + " called " + describe(all[r]));
      }
    }
    return Status::ok();
  }

  Status agree_alltoallv_counts(std::span<const size_t> send_counts,
                                std::span<const size_t> recv_counts) {
    const size_t n = static_cast<size_t>(size());
    std::vector<uint64_t> mine(2 * n), all(2 * n * n);
    std::copy(send_counts.begin(), send_counts.end(), mine.begin());
    std::copy(recv_counts.begin(), recv_counts.end(), mine.begin() + n);
    FRUGAL_RETURN_IF_ERROR(inner_->allgather(bytes_of(std::as_const(mine)), bytes_of(all)));
    for (size_t i = 0; i < n; ++i) {
      for (size_t j = 0; j < n; ++j) {
        uint64_t sent = all[i * 2 * n + j];          // rank i sends to j
        uint64_t expected = all[j * 2 * n + n + i];  // rank j expects from i
        if (sent != expected) {
          return invalid_argument("alltoallv #" + std::to_string(sequence_) + ": rank " +
                                  std::to_string(i) + " sends " + std::to_string(sent) +
                                  " bytes to rank " + std::to_string(j) + ", which expects " +
                                  std::to_string(expected));
        }
      }
    }
    return Status::ok();
  }

  std::unique_ptr<Communicator> inner_;
  uint64_t sequence_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_checked_communicator(std::unique_ptr<Communicator> inner) {
  return std::make_unique<CheckedCommunicator>(std::move(inner));
}

}  // namespace frugal::detail
