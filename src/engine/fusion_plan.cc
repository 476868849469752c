#include "engine/fusion_plan.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <numeric>

namespace frugal {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Prefix sums over tensors [0, L): sum(i, j) = over [i, j).
struct Prefix {
  std::vector<double> values{0.0};
  void push(double v) { values.push_back(values.back() + v); }
  double sum(size_t i, size_t j) const { return values[j] - values[i]; }
};

struct Model {
  const PlanRequest& request;
  Prefix dense_bytes, payload_bytes, decompress_us, compress_us;
  std::vector<double> done_us;       // sparsify-ahead: when tensor t is available to send
  std::vector<double> ready_prefix;  // max ready_us over [0, j)
  std::vector<double> done_prefix;   // max done_us over [0, j)

  explicit Model(const PlanRequest& r) : request(r) {
    double compress_free = 0;
    done_prefix.push_back(0);
    ready_prefix.push_back(0);
    for (size_t t = 0; t < r.tensors.size(); ++t) {
      const TensorProfile& p = r.tensors[t];
      const bool sparse = r.compressed[t];
      dense_bytes.push(sparse ? 0.0 : static_cast<double>(p.bytes));
      payload_bytes.push(sparse ? p.payload_bytes : 0.0);
      decompress_us.push(sparse ? p.decompress_us : 0.0);
      compress_us.push(sparse ? p.compress_us : 0.0);
      double done = p.ready_us;
      if (sparse) {
        done = std::max(p.ready_us, compress_free) + p.compress_us;
        compress_free = done;
      }
      done_us.push_back(done);
      done_prefix.push_back(std::max(done_prefix.back(), done));
      ready_prefix.push_back(std::max(ready_prefix.back(), p.ready_us));
    }
  }

  // Communication (plus decoding) time of bucket [i, j), its dense tensors riding in the
  // allgather where that is cheaper (rides()).
  double comm_us(size_t i, size_t j) const {
    return std::min(separate_comm_us(i, j), rides_allowed(i, j) ? riding_comm_us(i, j) : kNever);
  }
  bool rides(size_t i, size_t j) const {
    return rides_allowed(i, j) && riding_comm_us(i, j) < separate_comm_us(i, j);
  }

 private:
  static constexpr double kNever = std::numeric_limits<double>::infinity();

  bool rides_allowed(size_t i, size_t j) const {
    return request.dense_can_ride && dense_bytes.sum(i, j) > 0 && payload_bytes.sum(i, j) > 0;
  }
  double gather_latency_us() const {
    return request.link.latency_us * (request.size_exchange ? 2 : 1);
  }
  // An allreduce of the dense tensors, then the gather of the payloads.
  double separate_comm_us(size_t i, size_t j) const {
    const LinkModel& link = request.link;
    const double n = request.world_size;
    double cost = 0;
    const double dense = dense_bytes.sum(i, j);
    if (dense > 0) cost += link.latency_us + dense * link.allreduce_us_per_byte;
    const double payload = payload_bytes.sum(i, j);
    if (payload > 0) {
      cost += gather_latency_us() + n * payload * link.allgather_us_per_byte +
              n * decompress_us.sum(i, j);
    }
    return cost;
  }
  // One gather of payloads and dense tensors together.
  double riding_comm_us(size_t i, size_t j) const {
    const double n = request.world_size;
    return gather_latency_us() +
           n * (payload_bytes.sum(i, j) + dense_bytes.sum(i, j)) *
               request.link.allgather_us_per_byte +
           n * decompress_us.sum(i, j);
  }
};

bool any_compressed(const PlanRequest& r, size_t i, size_t j) {
  for (size_t t = i; t < j; ++t) {
    if (r.compressed[t]) return true;
  }
  return false;
}

Bucket make_bucket(const Model& model, int index, size_t i, size_t j, bool fused) {
  const PlanRequest& r = model.request;
  Bucket bucket;
  bucket.index = index;
  for (size_t t = i; t < j; ++t) {
    const size_t bytes = r.tensors[t].bytes;
    bucket.tensors.push_back({static_cast<TensorId>(t), bucket.bytes, bytes, r.compressed[t]});
    bucket.bytes += bytes;
  }
  bucket.compress_fused = fused && any_compressed(r, i, j);
  bucket.dense_rides_gather = model.rides(i, j);
  return bucket;
}

}  // namespace

Result<FusionSpec> parse_fusion(std::string_view text) {
  const std::string valid = "valid: none, bytes:MB (e.g. bytes:25), omgs, safusion, ssfusion";
  if (text == "none") return FusionSpec{FusionKind::kNone, 0};
  if (text == "omgs") return FusionSpec{FusionKind::kOmgs, 0};
  if (text == "safusion") return FusionSpec{FusionKind::kSafusion, 0};
  if (text == "ssfusion") return FusionSpec{FusionKind::kSsfusion, 0};
  if (text.starts_with("bytes:")) {
    const std::string_view number = text.substr(6);
    double mb = 0;
    const auto [end, error] = std::from_chars(number.data(), number.data() + number.size(), mb);
    if (error != std::errc() || end != number.data() + number.size() || !(mb > 0) || mb > 1e6) {
      return invalid_argument("--fusion '" + std::string(text) +
                              "': MB must be a number > 0 (at most 1e6); " + valid);
    }
    return FusionSpec{FusionKind::kBytes, static_cast<size_t>(std::llround(mb * kMiB))};
  }
  return invalid_argument("--fusion '" + std::string(text) + "' is unknown; " + valid);
}

std::string fusion_to_string(const FusionSpec& spec) {
  switch (spec.kind) {
    case FusionKind::kNone:
      return "none";
    case FusionKind::kBytes: {
      std::string mb = std::to_string(static_cast<double>(spec.bytes) / kMiB);
      mb.erase(mb.find_last_not_of('0') + 1);  // 25.000000 -> 25.
      if (mb.back() == '.') mb.pop_back();
      return "bytes:" + mb;
    }
    case FusionKind::kOmgs:
      return "omgs";
    case FusionKind::kSafusion:
      return "safusion";
    case FusionKind::kSsfusion:
      return "ssfusion";
  }
  return "?";
}

bool uses_cost_model(FusionKind kind) {
  return kind == FusionKind::kOmgs || kind == FusionKind::kSafusion ||
         kind == FusionKind::kSsfusion;
}

Plan plan_by_cost_model(const PlanRequest& request) {
  const size_t count = request.tensors.size();
  Plan plan;
  if (count == 0) return plan;
  const Model model(request);
  const bool fused = request.kind == FusionKind::kOmgs;
  // best[j]: the earliest modelled end of communication for tensors [0, j); for sparsify-behind
  // also the end of the compression thread on that path (compress[j]).
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<double> best(count + 1, kInf), compress_end(count + 1, 0.0);
  std::vector<size_t> from(count + 1, 0);
  best[0] = 0;
  for (size_t j = 1; j <= count; ++j) {
    for (size_t i = 0; i < j; ++i) {
      double ready = model.done_prefix[j];
      double compressed_at = compress_end[i];
      if (fused) {
        // The bucket's compression starts when its last gradient arrives and the compression
        // thread is free, and covers the whole fused buffer.
        const double work = model.compress_us.sum(i, j);
        compressed_at =
            work > 0 ? std::max(model.ready_prefix[j], compress_end[i]) + work : compress_end[i];
        ready = std::max(model.ready_prefix[j], compressed_at);
      }
      const double end = std::max(ready, best[i]) + model.comm_us(i, j);
      if (end < best[j]) {
        best[j] = end;
        from[j] = i;
        compress_end[j] = compressed_at;
      }
    }
  }
  std::vector<std::pair<size_t, size_t>> ranges;
  for (size_t j = count; j > 0; j = from[j]) ranges.emplace_back(from[j], j);
  std::reverse(ranges.begin(), ranges.end());
  for (const auto& [i, j] : ranges) {
    plan.buckets.push_back(make_bucket(model, static_cast<int>(plan.buckets.size()), i, j, fused));
  }
  plan.predicted_us = best[count];
  return plan;
}

double simulate_plan(const PlanRequest& request, const std::vector<Bucket>& buckets) {
  const Model model(request);
  double comm_end = 0, compress_free = 0;
  for (const Bucket& bucket : buckets) {
    if (bucket.tensors.empty()) continue;
    const size_t i = static_cast<size_t>(bucket.tensors.front().id);
    const size_t j = static_cast<size_t>(bucket.tensors.back().id) + 1;
    double ready = model.done_prefix[j];
    if (bucket.compress_fused) {
      compress_free = std::max(model.ready_prefix[j], compress_free) + model.compress_us.sum(i, j);
      ready = compress_free;
    }
    comm_end = std::max(ready, comm_end) + model.comm_us(i, j);
  }
  return comm_end;
}

namespace {

double dense_cost(const TensorProfile& t, const LinkModel& link) {
  return static_cast<double>(t.bytes) * link.allreduce_us_per_byte;
}

double sparse_cost(const TensorProfile& t, const LinkModel& link, int world_size) {
  return t.compress_us +
         world_size * (t.payload_bytes * link.allgather_us_per_byte + t.decompress_us);
}

}  // namespace

std::vector<bool> choose_compressed_by_size(const std::vector<TensorProfile>& tensors,
                                            const LinkModel& link, int world_size,
                                            size_t* cutoff_bytes) {
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return tensors[a].bytes < tensors[b].bytes; });
  // total(k) = dense cost of the k smallest + sparse cost of the rest; pick the best k at a
  // boundary between distinct sizes (equal sizes share a fate: the cut-off is a size).
  double total = 0;
  for (const TensorProfile& t : tensors) total += sparse_cost(t, link, world_size);
  double best_total = total;
  size_t best_k = 0;
  for (size_t k = 0; k < order.size(); ++k) {
    const TensorProfile& t = tensors[order[k]];
    total += dense_cost(t, link) - sparse_cost(t, link, world_size);
    const bool boundary = k + 1 == order.size() || tensors[order[k + 1]].bytes != t.bytes;
    if (boundary && total < best_total) {
      best_total = total;
      best_k = k + 1;
    }
  }
  std::vector<bool> compressed(tensors.size(), true);
  for (size_t k = 0; k < best_k; ++k) compressed[order[k]] = false;
  if (cutoff_bytes) *cutoff_bytes = best_k == 0 ? 0 : tensors[order[best_k - 1]].bytes + 1;
  return compressed;
}

std::vector<bool> choose_compressed_per_tensor(const std::vector<TensorProfile>& tensors,
                                               const LinkModel& link, int world_size) {
  std::vector<bool> compressed(tensors.size());
  for (size_t t = 0; t < tensors.size(); ++t) {
    compressed[t] = sparse_cost(tensors[t], link, world_size) < dense_cost(tensors[t], link);
  }
  return compressed;
}

void mark_compression(std::vector<Bucket>& buckets, const std::vector<bool>& compressed,
                      bool fused) {
  for (Bucket& bucket : buckets) {
    bool any = false;
    for (TensorSlot& slot : bucket.tensors) {
      slot.compressed = compressed[static_cast<size_t>(slot.id)];
      any = any || slot.compressed;
    }
    bucket.compress_fused = fused && any;
  }
}

}  // namespace frugal
