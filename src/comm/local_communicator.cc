#include "comm/local_communicator.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <numeric>
#include <vector>

#include "comm/factory.h"

namespace frugal::detail {

// What one rank brings to the current collective. Pointers stay valid until the rank returns.
struct Post {
  std::string_view op;
  DType dtype = DType::kU8;
  ReduceOp reduce = ReduceOp::kSum;
  size_t count = 0;  // elements (allreduce) or bytes (everything else)
  const std::byte* in = nullptr;
  std::byte* out = nullptr;
  std::span<const size_t> counts;       // allgatherv counts, alltoallv send counts
  std::span<const size_t> recv_counts;  // alltoallv
  int root = 0;
  int color = 0;
  int key = 0;
};

// Shared state of the ranks of one local group. Ranks meet at numbered phases; each collective
// is two or three phases: (1) everyone has posted, (2) everyone has read, (3) everyone has
// written. Thread-safe.
class LocalWorld {
 public:
  LocalWorld(int size, std::chrono::milliseconds timeout)
      : size_(size), timeout_(timeout), posts_(size), arrived_(size, 0), left_(size, false) {}

  int size() const { return size_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  Post& post(int rank) { return posts_[rank]; }

  Status broken() {
    std::lock_guard lock(mutex_);
    return broken_;
  }

  // Marks `rank` as arrived at `phase` and waits for every rank to arrive there. Fails, and
  // breaks the world for everyone, if a rank left or did not arrive within the timeout.
  Status arrive_and_wait(int rank, uint64_t phase, const std::string& what) {
    std::unique_lock lock(mutex_);
    if (!broken_.is_ok()) return broken_;
    arrived_[rank] = phase;
    cv_.notify_all();
    auto all_arrived = [&] {
      return std::all_of(arrived_.begin(), arrived_.end(), [&](uint64_t p) { return p >= phase; });
    };
    auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (!all_arrived()) {
      if (!broken_.is_ok()) return broken_;
      for (int r = 0; r < size_; ++r) {
        if (left_[r] && arrived_[r] < phase) {
          return break_world(unavailable(what + " on rank " + std::to_string(rank) + ": rank " +
                                         std::to_string(r) +
                                         " left the group (its communicator was destroyed)"));
        }
      }
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && !all_arrived()) {
        std::string missing;
        for (int r = 0; r < size_; ++r) {
          if (arrived_[r] < phase) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
        return break_world(deadline_exceeded(what + " on rank " + std::to_string(rank) +
                                             ": rank(s) " + missing + " did not join within " +
                                             std::to_string(timeout_.count()) + " ms"));
      }
    }
    return Status::ok();
  }

  Status fail(Status status) {
    std::lock_guard lock(mutex_);
    return break_world(std::move(status));
  }

  void leave(int rank) {
    std::lock_guard lock(mutex_);
    left_[rank] = true;
    cv_.notify_all();
  }

  // The world for `color` of split number `split_index`; the first member to ask creates it.
  std::shared_ptr<LocalWorld> child(uint64_t split_index, int color, int members) {
    std::lock_guard lock(mutex_);
    auto& entry = children_[{split_index, color}];
    if (!entry.world) entry.world = std::make_shared<LocalWorld>(members, timeout_);
    std::shared_ptr<LocalWorld> world = entry.world;
    if (++entry.taken == members) children_.erase({split_index, color});
    return world;
  }

 private:
  Status break_world(Status status) {
    if (broken_.is_ok()) broken_ = std::move(status);
    cv_.notify_all();
    return broken_;
  }

  struct Child {
    std::shared_ptr<LocalWorld> world;
    int taken = 0;
  };

  const int size_;
  const std::chrono::milliseconds timeout_;
  std::vector<Post> posts_;  // posts_[r] is written only by rank r, between phases
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<uint64_t> arrived_;
  std::vector<bool> left_;
  Status broken_;
  std::map<std::pair<uint64_t, int>, Child> children_;
};

namespace {

std::string describe(const Post& p) {
  std::string s(p.op);
  if (p.op == "allreduce") {
    s += "(" + std::string(dtype_name(p.dtype)) + " x " + std::to_string(p.count) + ", " +
         std::string(reduce_op_name(p.reduce)) + ")";
  } else if (p.op == "broadcast") {
    s += "(" + std::to_string(p.count) + " bytes, root " + std::to_string(p.root) + ")";
  } else if (p.op == "split" || p.op == "barrier" || p.op == "alltoallv" || p.op == "allgatherv") {
    // sizes are checked separately
  } else {
    s += "(" + std::to_string(p.count) + " bytes)";
  }
  return s;
}

}  // namespace

namespace {

// Sum (or max/min) of chunk [begin, end) over all ranks' buffers, in rank order so the result
// is deterministic. f16/bf16 accumulate in f32 and round once.
std::vector<std::byte> reduce_chunk(LocalWorld& world, DType dtype, ReduceOp op, size_t begin,
                                    size_t end) {
  const size_t n = end - begin;
  const size_t elem = dtype_size(dtype);
  const bool half = dtype == DType::kF16 || dtype == DType::kBF16;
  std::vector<std::byte> result(n * elem);
  if (n == 0) return result;
  if (!half) {
    std::memcpy(result.data(), world.post(0).out + begin * elem, n * elem);
    for (int r = 1; r < world.size(); ++r) {
      reduce_elements(result.data(), result.data(), world.post(r).out + begin * elem, n, dtype, op);
    }
    if (op == ReduceOp::kAvg) scale_in_place(result.data(), n, dtype, world.size());
    return result;
  }
  auto widen = [dtype](uint16_t h) {
    return dtype == DType::kF16 ? f16_to_f32(h) : bf16_to_f32(h);
  };
  std::vector<float> acc(n);
  for (int r = 0; r < world.size(); ++r) {
    const auto* src = reinterpret_cast<const uint16_t*>(world.post(r).out) + begin;
    for (size_t i = 0; i < n; ++i) {
      float v = widen(src[i]);
      if (r == 0) {
        acc[i] = v;
      } else if (op == ReduceOp::kMax) {
        acc[i] = std::max(acc[i], v);
      } else if (op == ReduceOp::kMin) {
        acc[i] = std::min(acc[i], v);
      } else {
        acc[i] += v;
      }
    }
  }
  auto* dst = reinterpret_cast<uint16_t*>(result.data());
  const float scale = op == ReduceOp::kAvg ? 1.0f / static_cast<float>(world.size()) : 1.0f;
  for (size_t i = 0; i < n; ++i) {
    dst[i] = dtype == DType::kF16 ? f32_to_f16(acc[i] * scale) : f32_to_bf16(acc[i] * scale);
  }
  return result;
}

size_t prefix_sum(std::span<const size_t> counts, size_t upto) {
  return std::accumulate(counts.begin(), counts.begin() + upto, size_t{0});
}

}  // namespace

LocalCommunicator::LocalCommunicator(std::shared_ptr<LocalWorld> world, int rank)
    : world_(std::move(world)), rank_(rank) {}

LocalCommunicator::~LocalCommunicator() { world_->leave(rank_); }

int LocalCommunicator::size() const { return world_->size(); }

std::chrono::milliseconds LocalCommunicator::timeout() const { return world_->timeout(); }

Status LocalCommunicator::begin(const Post& post) {
  FRUGAL_RETURN_IF_ERROR(world_->broken());
  what_ = std::string(post.op) + " #" + std::to_string(++operations_);
  world_->post(rank_) = post;
  FRUGAL_RETURN_IF_ERROR(sync());
  LocalWorld& world = *world_;
  const Post& first = world.post(0);
  for (int r = 1; r < world.size(); ++r) {
    const Post& other = world.post(r);
    bool same = other.op == first.op;
    if (same && (first.op == "allreduce" || first.op == "allgather" || first.op == "broadcast")) {
      same = other.count == first.count && other.dtype == first.dtype &&
             other.reduce == first.reduce && other.root == first.root;
    }
    if (same && first.op == "allgatherv") {
      same = std::equal(other.counts.begin(), other.counts.end(), first.counts.begin(),
                        first.counts.end());
    }
    if (!same) {
      return world.fail(invalid_argument(what_ + ": ranks disagree: rank 0 called " +
                                         describe(first) + ", rank " + std::to_string(r) +
                                         " called " + describe(other)));
    }
  }
  if (first.op == "alltoallv") {
    for (int i = 0; i < world.size(); ++i) {
      for (int j = 0; j < world.size(); ++j) {
        if (world.post(i).counts[j] != world.post(j).recv_counts[i]) {
          return world.fail(invalid_argument(
              what_ + ": rank " + std::to_string(i) + " sends " +
              std::to_string(world.post(i).counts[j]) + " bytes to rank " + std::to_string(j) +
              ", which expects " + std::to_string(world.post(j).recv_counts[i])));
        }
      }
    }
  }
  return Status::ok();
}

Status LocalCommunicator::sync() { return world_->arrive_and_wait(rank_, ++phase_, what_); }

Status LocalCommunicator::allreduce(MutableView buf, ReduceOp op) {
  FRUGAL_RETURN_IF_ERROR(check_allreduce_args(*this, buf, op));
  const size_t count = static_cast<size_t>(buf.numel());
  Post post;
  post.op = "allreduce";
  post.dtype = buf.dtype;
  post.reduce = op;
  post.count = count;
  post.out = static_cast<std::byte*>(buf.data);
  FRUGAL_RETURN_IF_ERROR(begin(post));
  // Reduce-scatter then allgather: rank r reduces chunk r of every buffer, then writes it back
  // into all of them once everyone has finished reading.
  const size_t p = static_cast<size_t>(size()), r = static_cast<size_t>(rank_);
  const size_t begin_elem = count * r / p, end_elem = count * (r + 1) / p;
  std::vector<std::byte> chunk = reduce_chunk(*world_, buf.dtype, op, begin_elem, end_elem);
  FRUGAL_RETURN_IF_ERROR(sync());
  const size_t elem = dtype_size(buf.dtype);
  for (int peer = 0; peer < size(); ++peer) {
    if (!chunk.empty()) {
      std::memcpy(world_->post(peer).out + begin_elem * elem, chunk.data(), chunk.size());
    }
  }
  return sync();
}

Status LocalCommunicator::allgather(ConstBytes in, MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_allgather_args(*this, in, out));
  Post post;
  post.op = "allgather";
  post.count = in.size();
  post.in = in.data();
  FRUGAL_RETURN_IF_ERROR(begin(post));
  for (int peer = 0; peer < size(); ++peer) {
    if (!in.empty()) std::memcpy(out.data() + peer * in.size(), world_->post(peer).in, in.size());
  }
  return sync();
}

Status LocalCommunicator::allgatherv(ConstBytes in, std::span<const size_t> counts,
                                     MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_allgatherv_args(*this, in, counts, out));
  Post post;
  post.op = "allgatherv";
  post.in = in.data();
  post.counts = counts;
  FRUGAL_RETURN_IF_ERROR(begin(post));
  size_t offset = 0;
  for (int peer = 0; peer < size(); ++peer) {
    if (counts[peer] > 0) std::memcpy(out.data() + offset, world_->post(peer).in, counts[peer]);
    offset += counts[peer];
  }
  return sync();
}

Status LocalCommunicator::broadcast(MutableBytes buf, int root) {
  FRUGAL_RETURN_IF_ERROR(check_broadcast_args(*this, root));
  Post post;
  post.op = "broadcast";
  post.count = buf.size();
  post.out = buf.data();
  post.root = root;
  FRUGAL_RETURN_IF_ERROR(begin(post));
  if (rank_ != root && !buf.empty()) std::memcpy(buf.data(), world_->post(root).out, buf.size());
  return sync();
}

Status LocalCommunicator::alltoallv(ConstBytes in, std::span<const size_t> send_counts,
                                    MutableBytes out, std::span<const size_t> recv_counts) {
  FRUGAL_RETURN_IF_ERROR(check_alltoallv_args(*this, in, send_counts, out, recv_counts));
  Post post;
  post.op = "alltoallv";
  post.in = in.data();
  post.counts = send_counts;
  post.recv_counts = recv_counts;
  FRUGAL_RETURN_IF_ERROR(begin(post));
  size_t offset = 0;
  for (int peer = 0; peer < size(); ++peer) {
    const Post& from = world_->post(peer);
    const size_t n = recv_counts[peer];
    if (n > 0) std::memcpy(out.data() + offset, from.in + prefix_sum(from.counts, rank_), n);
    offset += n;
  }
  return sync();
}

Status LocalCommunicator::barrier() {
  Post post;
  post.op = "barrier";
  FRUGAL_RETURN_IF_ERROR(begin(post));
  return sync();  // keeps every post readable until all ranks have validated them
}

Result<std::unique_ptr<Communicator>> LocalCommunicator::split(int color, int key) {
  FRUGAL_RETURN_IF_ERROR(check_split_args(*this, color));
  Post post;
  post.op = "split";
  post.color = color;
  post.key = key;
  FRUGAL_RETURN_IF_ERROR(begin(post));
  std::vector<std::pair<int, int>> members;  // (key, old rank) of my color
  for (int peer = 0; peer < size(); ++peer) {
    const Post& p = world_->post(peer);
    if (p.color == color) members.emplace_back(p.key, peer);
  }
  std::sort(members.begin(), members.end());
  const int new_rank = static_cast<int>(
      std::find(members.begin(), members.end(), std::make_pair(key, rank_)) - members.begin());
  auto child = world_->child(++splits_, color, static_cast<int>(members.size()));
  FRUGAL_RETURN_IF_ERROR(sync());
  return std::unique_ptr<Communicator>(new LocalCommunicator(std::move(child), new_rank));
}

}  // namespace frugal::detail

namespace frugal {

Result<std::vector<std::unique_ptr<Communicator>>> make_local_group(int world_size,
                                                                    int64_t timeout_ms) {
  if (world_size < 1) {
    return invalid_argument("local group of " + std::to_string(world_size) +
                            " ranks; it needs at least 1");
  }
  if (timeout_ms <= 0) return invalid_argument("timeout must be > 0 ms");
  auto world =
      std::make_shared<detail::LocalWorld>(world_size, std::chrono::milliseconds(timeout_ms));
  std::vector<std::unique_ptr<Communicator>> ranks;
  for (int r = 0; r < world_size; ++r) {
    ranks.push_back(std::make_unique<detail::LocalCommunicator>(world, r));
  }
  return ranks;
}

}  // namespace frugal
