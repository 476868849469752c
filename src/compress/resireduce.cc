// resireduce(ef(inner)):mode=weighted,rows=0.5,cols=0.5,min_2d=65536 -- ResiReduce (Euro-Par'25):
// error feedback whose residuals take less memory. It replaces ef's residual storage (the update
// itself is ef's, EfStep) with three kinds of tensors, decided at registration:
//
// Groups (inter-layer). Tensors of at least 2 dims with the same shape and the same name once
// digit runs become '#' (GroupingRule in memories_internal.h: "layer3.1.conv2.weight",
// "layer3.2.conv2.weight", ...: the same layer of consecutive blocks) share ONE residual buffer S.
// Members are compressed one after another within a step (under the group's mutex, as tensors may
// be compressed concurrently), and S is a running weighted mean updated in place:
//   member j of a round compensates with S as it stands -- the first member with the previous
//   round's mean, member j > 1 with the weighted mean of the new residuals of members 1..j-1 --
//   computes its new residual r_j = g_j + S - decode(payload_j) in S (ef's step), then folds it:
//   S_j = (W * S_{j-1} + w_j * r_j) / (W + w_j) = r_j - beta * (g_j - decode(payload_j)),
//   beta = W / (W + w_j), W += w_j,
// so no per-member buffer ever exists. w_j = 1/2 ||r_j||_1 / n + 1/2 ||r_j||_2 / sqrt(n)
// (mode=weighted: the paper's weights on the new residual; the public code uses the compensated
// gradient) or 1 (mode=mean). After the round's last member S is the weighted mean of the
// round's new residuals. A round ends when every member has been compressed or the step changes.
// With a sparse inner the decode(payload) term is a scatter; with a dense one (fp16) it goes
// through decompress_accumulate on S / beta, which costs S a few ulps of the gradient's scale.
//
// 2-D sub-residuals (intra-layer). A 2-D tensor of at least min_2d elements that is in no group
// keeps its residual only on rows x cols: the floor(rows * R) rows and floor(cols * C) columns
// (at least 1 each) of largest L1 norm of the new residual, ties to the lower index (the paper
// samples them from softmax(L1); this selection is deterministic). It stores the row indices,
// the column indices (i32, ascending) and the sub-matrix; the rest of the residual is dropped.
// The compensated gradient needs a dense buffer: it comes from a scratch pool (at most one
// buffer per concurrently compressing thread, sized to the largest such tensor), not per tensor.
//
// Everything else keeps a plain ef residual. A failed compress clears the residual it used (the
// group's S, the sub-matrix). Cost model: the inner's bytes on the wire; memory (stats()) 4 bytes
// per element of plain tensors, 4 * n per group, 4 * (r * c + r + c) per 2-D tensor, plus the
// scratch pool (not counted in residual_bytes).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <numeric>

#include "compress/memories_internal.h"

namespace frugal::memory_internal {

std::string GroupingRule::pattern(const std::string& name) {
  std::string out;
  for (size_t i = 0; i < name.size(); ++i) {
    const bool digit = name[i] >= '0' && name[i] <= '9';
    if (!digit) {
      out += name[i];
    } else if (i == 0 || !(name[i - 1] >= '0' && name[i - 1] <= '9')) {
      out += '#';
    }
  }
  return out;
}

TensorId GroupingRule::add(TensorId id, const TensorInfo& info) {
  if (info.shape.size() < 2) return -1;
  auto [it, inserted] =
      last_with_key_.try_emplace(pattern(info.name) + " " + shape_to_string(info.shape), id);
  if (inserted) return -1;
  const TensorId previous = it->second;
  it->second = id;
  return previous;
}

int64_t kept_count(double fraction, int64_t dim) {
  if (dim <= 0) return 0;
  // The epsilon keeps e.g. 0.29 * 100 at 29 despite 0.29 being stored as 0.28999...
  const auto kept = static_cast<int64_t>(std::floor(fraction * static_cast<double>(dim) + 1e-9));
  return std::clamp<int64_t>(kept, 1, dim);
}

namespace {

constexpr float kMinFoldScale = 0x1p-60f;

enum class Kind : uint8_t { kPlain, kGroup, kSub };

struct SubResidual {
  int64_t num_rows = 0;  // R and C of the tensor
  int64_t num_cols = 0;
  std::vector<int32_t> rows;  // ascending
  std::vector<int32_t> cols;  // ascending
  std::vector<float> values;  // rows.size() x cols.size(), row-major

  void reset(int64_t kept_rows, int64_t kept_cols) {
    rows.resize(static_cast<size_t>(kept_rows));
    cols.resize(static_cast<size_t>(kept_cols));
    std::iota(rows.begin(), rows.end(), 0);
    std::iota(cols.begin(), cols.end(), 0);
    values.assign(rows.size() * cols.size(), 0.0f);
  }
  int64_t bytes() const {
    return static_cast<int64_t>((values.size() + rows.size() + cols.size()) * 4);
  }
};

struct Slot {
  Kind kind = Kind::kPlain;
  std::vector<float> residual;  // kPlain
  size_t group = 0;             // kGroup
  SubResidual sub;              // kSub
};

struct Group {
  std::vector<TensorId> members;  // registration order; members[0] names the group's state
  std::vector<float> residual;    // S
  std::mutex mutex;
  // The current round of the running mean.
  double weight = 0;  // W: sum of the weights folded so far
  int64_t round_step = 0;
  int64_t folded = 0;  // members folded in this round
};

// Dense buffers for 2-D sub-residual tensors, reused across calls and tensors.
class ScratchPool {
 public:
  std::vector<float> acquire(size_t n) {
    std::vector<float> buffer;
    {
      std::lock_guard lock(mutex_);
      if (!free_.empty()) {
        buffer = std::move(free_.back());
        free_.pop_back();
      }
    }
    buffer.resize(n);
    return buffer;
  }
  void release(std::vector<float> buffer) {
    std::lock_guard lock(mutex_);
    free_.push_back(std::move(buffer));
  }

 private:
  std::mutex mutex_;
  std::vector<std::vector<float>> free_;
};

// Keeps the `kept` entries of largest `l1` (ties to the lower index), returned ascending. A NaN
// norm counts as the largest, so the comparison stays a strict weak order.
std::vector<int32_t> top_by_l1(std::vector<float>& l1, int64_t kept) {
  for (float& x : l1) {
    if (std::isnan(x)) x = INFINITY;
  }
  std::vector<int32_t> order(l1.size());
  std::iota(order.begin(), order.end(), 0);
  auto before = [&l1](int32_t a, int32_t b) {
    return l1[static_cast<size_t>(a)] > l1[static_cast<size_t>(b)] ||
           (l1[static_cast<size_t>(a)] == l1[static_cast<size_t>(b)] && a < b);
  };
  if (kept < static_cast<int64_t>(order.size())) {
    std::nth_element(order.begin(), order.begin() + kept, order.end(), before);
    order.resize(static_cast<size_t>(kept));
  }
  std::sort(order.begin(), order.end());
  return order;
}

// Typed state entries besides f32 (which compressor_base.h provides).
template <typename T>
void save_state(StateDict& state, const std::string& key, DType dtype, const Shape& shape,
                const std::vector<T>& values) {
  StateTensor& entry = state[key];
  entry.dtype = dtype;
  entry.shape = shape;
  entry.data.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(entry.data.data(), values.data(), entry.data.size());
}

template <typename T>
Result<bool> load_state(const StateDict& state, const std::string& key, DType dtype,
                        const Shape& shape, std::vector<T>& values) {
  auto it = state.find(key);
  if (it == state.end()) return false;
  const StateTensor& entry = it->second;
  const auto n = static_cast<size_t>(shape_numel(shape));
  if (entry.dtype != dtype || entry.shape != shape || entry.data.size() != n * sizeof(T)) {
    return data_loss("saved compressor state '" + key + "' is " +
                     std::string(dtype_name(entry.dtype)) + " " + shape_to_string(entry.shape) +
                     " (" + std::to_string(entry.data.size()) + " bytes); expected " +
                     std::string(dtype_name(dtype)) + " " + shape_to_string(shape));
  }
  values.resize(n);
  if (n > 0) std::memcpy(values.data(), entry.data.data(), entry.data.size());
  return true;
}

Status check_indices(const std::string& key, const std::vector<int32_t>& indices, int64_t dim) {
  int64_t previous = -1;
  for (int32_t index : indices) {
    if (index <= previous || index >= dim) {
      return data_loss("saved compressor state '" + key + "' has index " + std::to_string(index) +
                       " out of order or beyond " + std::to_string(dim - 1));
    }
    previous = index;
  }
  return Status::ok();
}

class ResiReduceStore final : public ResidualStore {
 public:
  explicit ResiReduceStore(const ResiReduceOptions& options) : options_(options) {}

  std::string spec(const std::string& inner_spec) const override {
    return "resireduce(ef(" + inner_spec +
           ")):mode=" + (options_.mode == GroupMean::kWeighted ? "weighted" : "mean") +
           ",rows=" + format_param(options_.rows) + ",cols=" + format_param(options_.cols) +
           ",min_2d=" + format_param(static_cast<double>(options_.min_2d));
  }

  void on_register(TensorId id, const TensorInfo& info) override {
    tensors_.push_back(info);
    slots_.emplace_back();
    Slot& slot = slots_.back();
    const int64_t n = shape_numel(info.shape);
    const TensorId joins = rule_.add(id, info);
    if (joins >= 0) {
      Slot& previous = slots_[static_cast<size_t>(joins)];
      if (previous.kind != Kind::kGroup) {
        // `previous` starts a group, and its residual becomes the group's.
        auto group = std::make_unique<Group>();
        group->members.push_back(joins);
        group->residual = dense_residual(joins);
        previous = Slot{Kind::kGroup, {}, groups_.size(), {}};
        groups_.push_back(std::move(group));
      }
      slot.kind = Kind::kGroup;
      slot.group = previous.group;
      groups_[slot.group]->members.push_back(id);
    } else if (info.shape.size() == 2 && n >= options_.min_2d) {
      slot.kind = Kind::kSub;
      slot.sub.num_rows = info.shape[0];
      slot.sub.num_cols = info.shape[1];
      slot.sub.reset(kept_count(options_.rows, info.shape[0]),
                     kept_count(options_.cols, info.shape[1]));
    } else {
      slot.residual.assign(static_cast<size_t>(n), 0.0f);
    }
  }

  Result<size_t> compress(TensorId id, EfStep& step) override {
    Slot& slot = slots_[static_cast<size_t>(id)];
    switch (slot.kind) {
      case Kind::kPlain: {
        Result<size_t> used = step.run(slot.residual);
        if (!used.is_ok()) std::fill(slot.residual.begin(), slot.residual.end(), 0.0f);
        return used;
      }
      case Kind::kGroup:
        return compress_member(*groups_[slot.group], step);
      case Kind::kSub:
        return compress_sub(slot.sub, step);
    }
    return internal_error("unknown residual kind");
  }

  void export_state(StateDict& state) const override {
    for (size_t i = 0; i < slots_.size(); ++i) {
      const Slot& slot = slots_[i];
      const std::string& name = tensors_[i].name;
      if (slot.kind == Kind::kPlain) {
        save_f32_state(state, state_key(name, "ef.residual"), tensors_[i].shape, slot.residual);
      } else if (slot.kind == Kind::kSub) {
        const SubResidual& sub = slot.sub;
        const auto r = static_cast<int64_t>(sub.rows.size());
        const auto c = static_cast<int64_t>(sub.cols.size());
        save_state(state, state_key(name, "resireduce.rows"), DType::kI32, {r}, sub.rows);
        save_state(state, state_key(name, "resireduce.cols"), DType::kI32, {c}, sub.cols);
        save_f32_state(state, state_key(name, "resireduce.sub_residual"), {r, c}, sub.values);
      }
    }
    for (const auto& group : groups_) {
      const TensorInfo& leader = tensors_[static_cast<size_t>(group->members.front())];
      save_f32_state(state, state_key(leader.name, "resireduce.group_residual"), leader.shape,
                     group->residual);
      const std::vector<double> round = {group->weight, static_cast<double>(group->round_step),
                                         static_cast<double>(group->folded)};
      save_state(state, state_key(leader.name, "resireduce.group_round"), DType::kF64, {3}, round);
    }
  }

  Status import_state(const StateDict& state) override {
    // Everything is decoded into copies first, so a bad entry changes nothing.
    std::vector<std::vector<float>> plain(slots_.size());
    std::vector<SubResidual> subs(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
      const TensorInfo& info = tensors_[i];
      if (slots_[i].kind == Kind::kPlain) {
        FRUGAL_ASSIGN_OR_RETURN(
            bool found,
            load_f32_state(state, state_key(info.name, "ef.residual"), info.shape, plain[i]));
        if (!found) plain[i].assign(slots_[i].residual.size(), 0.0f);
      } else if (slots_[i].kind == Kind::kSub) {
        FRUGAL_ASSIGN_OR_RETURN(subs[i], load_sub(state, info, slots_[i].sub));
      }
    }
    struct LoadedGroup {
      std::vector<float> residual;
      std::vector<double> round;
    };
    std::vector<LoadedGroup> groups(groups_.size());
    for (size_t g = 0; g < groups_.size(); ++g) {
      const Group& group = *groups_[g];
      const TensorInfo& leader = tensors_[static_cast<size_t>(group.members.front())];
      const std::string round_key = state_key(leader.name, "resireduce.group_round");
      FRUGAL_ASSIGN_OR_RETURN(
          bool has_residual,
          load_f32_state(state, state_key(leader.name, "resireduce.group_residual"), leader.shape,
                         groups[g].residual));
      FRUGAL_ASSIGN_OR_RETURN(bool has_round,
                              load_state(state, round_key, DType::kF64, {3}, groups[g].round));
      if (!has_residual) groups[g].residual.assign(group.residual.size(), 0.0f);
      if (!has_round || !has_residual) groups[g].round = {0, 0, 0};
      const std::vector<double>& round = groups[g].round;
      if (!(round[0] >= 0) || !std::isfinite(round[0]) || !(round[2] >= 0) ||
          round[2] > static_cast<double>(group.members.size()) ||
          round[2] != std::floor(round[2])) {
        return data_loss("saved compressor state '" + round_key +
                         "' is not a valid round (weight >= 0, 0 <= folded <= " +
                         std::to_string(group.members.size()) + ")");
      }
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (slots_[i].kind == Kind::kPlain) slots_[i].residual = std::move(plain[i]);
      if (slots_[i].kind == Kind::kSub) slots_[i].sub = std::move(subs[i]);
    }
    for (size_t g = 0; g < groups_.size(); ++g) {
      Group& group = *groups_[g];
      group.residual = std::move(groups[g].residual);
      group.weight = groups[g].round[0];
      group.round_step = static_cast<int64_t>(groups[g].round[1]);
      group.folded = static_cast<int64_t>(groups[g].round[2]);
    }
    return Status::ok();
  }

  CompressorStats stats() const override {
    CompressorStats stats;
    int64_t plain_ef_bytes = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
      plain_ef_bytes += shape_numel(tensors_[i].shape) * 4;
      if (slots_[i].kind == Kind::kPlain) {
        stats.residual_bytes += static_cast<int64_t>(slots_[i].residual.size() * 4);
      } else if (slots_[i].kind == Kind::kSub) {
        stats.residual_bytes += slots_[i].sub.bytes();
      }
    }
    for (const auto& group : groups_) {
      stats.residual_bytes += static_cast<int64_t>(group->residual.size() * 4);
    }
    stats.residual_bytes_saved = plain_ef_bytes - stats.residual_bytes;
    return stats;
  }

 private:
  // The residual of tensor `id` as a dense buffer (when it becomes a group's).
  std::vector<float> dense_residual(TensorId id) const {
    const Slot& slot = slots_[static_cast<size_t>(id)];
    if (slot.kind == Kind::kPlain) return slot.residual;
    std::vector<float> dense(static_cast<size_t>(shape_numel(tensors_[id].shape)), 0.0f);
    if (slot.kind == Kind::kSub) scatter(slot.sub, dense);
    return dense;
  }

  static void scatter(const SubResidual& sub, std::vector<float>& dense) {
    const size_t kept_cols = sub.cols.size();
    for (size_t a = 0; a < sub.rows.size(); ++a) {
      float* row = dense.data() + static_cast<int64_t>(sub.rows[a]) * sub.num_cols;
      const float* values = sub.values.data() + a * kept_cols;
      for (size_t b = 0; b < kept_cols; ++b) row[sub.cols[b]] = values[b];
    }
  }

  Result<size_t> compress_member(Group& group, EfStep& step) {
    std::lock_guard lock(group.mutex);
    if (group.folded == 0 || group.round_step != step.step().step ||
        group.folded >= static_cast<int64_t>(group.members.size())) {
      group.weight = 0;
      group.folded = 0;
      group.round_step = step.step().step;
    }
    Result<size_t> used = fold_member(group, step);
    if (!used.is_ok()) {
      std::fill(group.residual.begin(), group.residual.end(), 0.0f);
      group.weight = 0;
      group.folded = 0;
    }
    return used;
  }

  Result<size_t> fold_member(Group& group, EfStep& step) {
    std::vector<float>& s = group.residual;
    FRUGAL_ASSIGN_OR_RETURN(size_t used, step.run(s));  // s = r_j
    double weight = 1;
    if (options_.mode == GroupMean::kWeighted) {
      double l1 = 0;
      double l2 = 0;
      norms(s.data(), s.size(), l1, l2);
      const auto n = static_cast<double>(s.size());
      weight = s.empty() ? 0.0 : 0.5 * l1 / n + 0.5 * l2 / std::sqrt(n);
    }
    const double total = group.weight + weight;
    const auto beta = static_cast<float>(total > 0 ? group.weight / total : 0.0);
    if (beta >= kMinFoldScale) {
      // s = r_j - beta * g_j + beta * decode(payload_j), the running mean (see the header).
      const std::span<const float> g = step.grad();
      for (size_t i = 0; i < s.size(); ++i) s[i] -= beta * g[i];
      FRUGAL_RETURN_IF_ERROR(step.add_scaled_payload(s, beta));
    }
    group.weight = total;
    ++group.folded;
    return used;
  }

  Result<size_t> compress_sub(SubResidual& sub, EfStep& step) {
    std::vector<float> dense = scratch_.acquire(step.grad().size());
    std::fill(dense.begin(), dense.end(), 0.0f);
    scatter(sub, dense);
    Result<size_t> used = step.run(dense);
    if (used.is_ok()) {
      std::vector<float> row_l1(static_cast<size_t>(sub.num_rows));
      std::vector<float> col_l1(static_cast<size_t>(sub.num_cols));
      row_col_l1(dense.data(), sub.num_rows, sub.num_cols, row_l1.data(), col_l1.data());
      sub.rows = top_by_l1(row_l1, static_cast<int64_t>(sub.rows.size()));
      sub.cols = top_by_l1(col_l1, static_cast<int64_t>(sub.cols.size()));
      const size_t kept_cols = sub.cols.size();
      for (size_t a = 0; a < sub.rows.size(); ++a) {
        const float* row = dense.data() + static_cast<int64_t>(sub.rows[a]) * sub.num_cols;
        float* values = sub.values.data() + a * kept_cols;
        for (size_t b = 0; b < kept_cols; ++b) values[b] = row[sub.cols[b]];
      }
    } else {
      std::fill(sub.values.begin(), sub.values.end(), 0.0f);
    }
    scratch_.release(std::move(dense));
    return used;
  }

  Result<SubResidual> load_sub(const StateDict& state, const TensorInfo& info,
                               const SubResidual& current) const {
    SubResidual sub = current;
    const auto r = static_cast<int64_t>(current.rows.size());
    const auto c = static_cast<int64_t>(current.cols.size());
    const std::string rows_key = state_key(info.name, "resireduce.rows");
    const std::string cols_key = state_key(info.name, "resireduce.cols");
    FRUGAL_ASSIGN_OR_RETURN(bool has_rows, load_state(state, rows_key, DType::kI32, {r}, sub.rows));
    FRUGAL_ASSIGN_OR_RETURN(bool has_cols, load_state(state, cols_key, DType::kI32, {c}, sub.cols));
    FRUGAL_ASSIGN_OR_RETURN(
        bool has_values,
        load_f32_state(state, state_key(info.name, "resireduce.sub_residual"), {r, c}, sub.values));
    if (!has_rows && !has_cols && !has_values) {
      sub.reset(r, c);
      return sub;
    }
    if (!has_rows || !has_cols || !has_values) {
      return data_loss("saved compressor state of tensor '" + info.name +
                       "' lacks one of resireduce.rows, resireduce.cols and "
                       "resireduce.sub_residual");
    }
    FRUGAL_RETURN_IF_ERROR(check_indices(rows_key, sub.rows, sub.num_rows));
    FRUGAL_RETURN_IF_ERROR(check_indices(cols_key, sub.cols, sub.num_cols));
    return sub;
  }

  ResiReduceOptions options_;
  GroupingRule rule_;
  std::vector<TensorInfo> tensors_;
  std::vector<Slot> slots_;
  std::vector<std::unique_ptr<Group>> groups_;
  ScratchPool scratch_;
};

Result<std::unique_ptr<Compressor>> resireduce_factory(const BuildRequest& request) {
  const SpecNode& ef_node = *request.node.inner;
  const std::string valid_form =
      "resireduce wraps error feedback: write resireduce(ef(<compressor>)), e.g. "
      "resireduce(ef(topk:density=0.01))";
  if (ef_node.name != "ef") {
    return invalid_argument("resireduce(" + spec_text(ef_node) + "): " + valid_form +
                            " (here resireduce(ef(" + spec_text(ef_node) + ")))");
  }
  if (!ef_node.inner) return invalid_argument("resireduce(ef): " + valid_form);
  if (!ef_node.params.empty()) {
    return invalid_argument("resireduce(" + spec_text(ef_node) +
                            "): ef has no parameters; valid: none (ef takes no parameters)");
  }
  FRUGAL_RETURN_IF_ERROR(reject_nested_memory(spec_text(request.node), *ef_node.inner));
  ResiReduceOptions options;
  FRUGAL_ASSIGN_OR_RETURN(std::string mode,
                          request.params.choice("mode", "weighted", {"weighted", "mean"}));
  options.mode = mode == "weighted" ? GroupMean::kWeighted : GroupMean::kMean;
  FRUGAL_ASSIGN_OR_RETURN(options.rows, request.params.real("rows", 0.5, 0.0, 1.0, true));
  FRUGAL_ASSIGN_OR_RETURN(options.cols, request.params.real("cols", 0.5, 0.0, 1.0, true));
  FRUGAL_ASSIGN_OR_RETURN(options.min_2d,
                          request.params.integer("min_2d", 65536, 1, int64_t{1} << 50));
  // resireduce builds ef's inner itself: ef's residual storage is what it replaces.
  FRUGAL_ASSIGN_OR_RETURN(std::unique_ptr<Compressor> inner,
                          request.build(*ef_node.inner, request.value_dtype));
  FRUGAL_RETURN_IF_ERROR(check_error_feedback_inner("resireduce(ef(...))", *inner));
  return std::unique_ptr<Compressor>(new ErrorFeedbackCompressor(request.context, std::move(inner),
                                                                 make_resireduce_store(options)));
}

}  // namespace

std::unique_ptr<ResidualStore> make_resireduce_store(const ResiReduceOptions& options) {
  return std::make_unique<ResiReduceStore>(options);
}

CompressorEntry resireduce_entry() {
  return {"resireduce",
          "ResiReduce: error feedback with one shared residual per group of same-type "
          "same-shape layers and a row x column sub-residual for large 2-D tensors",
          {{"mode", "weighted", "group mean: weighted (1/2 L1/n + 1/2 L2/sqrt(n)) or mean"},
           {"rows", "0.5", "fraction of rows a 2-D sub-residual keeps, 0 < rows <= 1"},
           {"cols", "0.5", "fraction of columns a 2-D sub-residual keeps, 0 < cols <= 1"},
           {"min_2d", "65536",
            "elements from which an ungrouped 2-D tensor keeps a sub-residual, >= 1"}},
          InnerSpec::kRequired,
          {"resireduce(ef(topk:density=0.01))",
           "resireduce(ef(fp16)):mode=mean,rows=0.25,cols=0.75,min_2d=1000"},
          resireduce_factory,
          /*loses_unsent=*/nullptr,
          /*keeps_memory=*/true};
}

}  // namespace frugal::memory_internal
