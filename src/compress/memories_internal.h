// Internals of the memory decorators (ef, momentum, resireduce): the error-feedback step shared by
// ef and resireduce, with a pluggable residual store; ResiReduce's grouping rule; spec checks.
// Not part of compress/'s API (only memory_compressor_entries() is). Thread-safety as compressor.h.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "compress/compressor_base.h"
#include "compress/registry.h"

namespace frugal::memory_internal {

// ---- Kernels (memory bound, vectorized; see memories.cc)
// -----------------------------------------

// dst[i] += src[i] for i < n; returns true when some sum is Inf or NaN.
bool add_and_check(float* dst, const float* src, size_t n);
// u = momentum * u + g; v += u (DGC's momentum correction); returns true when some v is Inf/NaN.
bool momentum_and_check(float* u, float* v, const float* g, float momentum, size_t n);
// Fills to l1 and l2 the L1 norm and the L2 norm of x, summed in a fixed order (deterministic).
void norms(const float* x, size_t n, double& l1, double& l2);
// L1 norms of the rows (row_l1[num_rows]) and the columns (col_l1[num_cols]) of a row-major
// matrix, in one pass, in a fixed order.
void row_col_l1(const float* x, int64_t num_rows, int64_t num_cols, float* row_l1, float* col_l1);

// ---- The error-feedback step
// ----------------------------------------------------------------------

class ErrorFeedbackCompressor;

// The part of one error-feedback step that every residual store shares. A store lends a dense
// buffer holding the residual to compensate with, and run() turns it into the new residual:
//   buffer += grad                       (the compensated gradient; non-finite -> error)
//   payload = inner.compress(buffer)
//   buffer -= decode(payload)            (inner.subtract_own_payload: no dense temporary)
// so `sent + new residual == grad + old residual` holds as exactly as the inner's decoding.
class EfStep {
 public:
  EfStep(ErrorFeedbackCompressor& owner, TensorId id, ConstView grad, MutableBytes out,
         const StepInfo& step)
      : owner_(owner), id_(id), grad_(grad), out_(out), step_(step) {}

  // REQUIRES: buffer.size() == numel. On error the buffer is unspecified (the store resets it).
  Result<size_t> run(std::span<float> buffer);

  std::span<const float> grad() const { return grad_.typed<float>(); }
  const StepInfo& step() const { return step_; }
  // The payload run() wrote.
  ConstBytes payload() const { return {out_.data(), used_}; }
  // target += scale * decode(payload()): a scatter for sparse payloads (O(count)); otherwise
  // target is scaled by 1/scale around the inner's decompress_accumulate.
  Status add_scaled_payload(std::span<float> target, float scale) const;

 private:
  ErrorFeedbackCompressor& owner_;
  TensorId id_;
  ConstView grad_;
  MutableBytes out_;
  StepInfo step_;
  size_t used_ = 0;
};

// Where residuals live: one dense f32 buffer per tensor (ef), or ResiReduce's groups and 2-D
// sub-residuals. compress() is called concurrently for different tensors (as compressor.h says);
// everything else runs alone.
class ResidualStore {
 public:
  virtual ~ResidualStore() = default;

  // The canonical spec of error feedback over `inner_spec` with this store.
  virtual std::string spec(const std::string& inner_spec) const = 0;
  virtual void on_register(TensorId id, const TensorInfo& info) = 0;
  // Runs one step of tensor `id` through step.run() on the buffer it lends. On any failure the
  // tensor's residual is cleared, so a skipped step (e.g. an overflow under loss scaling) does
  // not poison later ones.
  virtual Result<size_t> compress(TensorId id, EfStep& step) = 0;
  virtual void export_state(StateDict& state) const = 0;
  // Validates everything first; on error nothing changes.
  virtual Status import_state(const StateDict& state) = 0;
  virtual CompressorStats stats() const = 0;
};

// The ef decorator; `store` decides where the residuals live (plain for ef, ResiReduce's).
class ErrorFeedbackCompressor final : public CompressorDecorator {
 public:
  ErrorFeedbackCompressor(const CompressorContext& context, std::unique_ptr<Compressor> inner,
                          std::unique_ptr<ResidualStore> store)
      : CompressorDecorator(context, std::move(inner)), store_(std::move(store)) {}

  std::string spec() const override { return store_->spec(inner().spec()); }
  Result<size_t> compress(TensorId id, ConstView grad, MutableBytes out,
                          const StepInfo& step) override;
  StateDict export_state() const override;
  Status import_state(const StateDict& state) override;
  CompressorStats stats() const override;

 private:
  friend class EfStep;
  Status on_register(TensorId id, const TensorInfo& info) override;

  std::unique_ptr<ResidualStore> store_;
};

// Dense residual of one tensor, one buffer each: GRACE's residual memory.
std::unique_ptr<ResidualStore> make_plain_residual_store();

// ---- ResiReduce
// ------------------------------------------------------------------------------------

// ResiReduce's inter-layer grouping rule, applied as tensors are registered. A tensor is
// groupable when it has at least 2 dimensions (conv and linear weights; biases and norms keep
// their own tiny residuals). Its key is its shape plus its name with every run of decimal digits
// replaced by '#' ("layer3.4.conv2.weight" -> "layer#.#.conv#.weight"), and every groupable
// tensor with the same key is in one group: in a ResNet, the same layer of the consecutive blocks
// of a stage (shapes differ between stages); in a transformer, the same weight of every layer.
class GroupingRule {
 public:
  // Returns the id of the earlier tensor `info` joins (its group's, or a new group with it), or
  // -1 when it starts alone.
  TensorId add(TensorId id, const TensorInfo& info);
  static std::string pattern(const std::string& name);  // digits runs -> '#'

 private:
  std::map<std::string, TensorId> last_with_key_;
};

enum class GroupMean { kWeighted, kMean };

struct ResiReduceOptions {
  GroupMean mode = GroupMean::kWeighted;
  double rows = 0.5;       // fraction of rows a 2-D sub-residual keeps
  double cols = 0.5;       // fraction of columns
  int64_t min_2d = 65536;  // 2-D tensors (not in a group) with at least this many elements
};

// max(1, floor(fraction * dim)) for dim > 0 (0 for dim == 0): the rows or columns kept.
int64_t kept_count(double fraction, int64_t dim);

std::unique_ptr<ResidualStore> make_resireduce_store(const ResiReduceOptions& options);

// ---- Spec checks -------------------------------------------------------------------------------

// The spec as written, e.g. "ef(topk:density=0.01)" (for messages).
std::string spec_text(const SpecNode& node);
// InvalidArgument when `inner` or anything it wraps is a memory (ef, momentum, resireduce);
// `written` is the whole spec being built, for the message.
Status reject_nested_memory(const std::string& written, const SpecNode& inner);
// InvalidArgument unless error feedback can wrap `inner`: one payload per step, kSum or kGather.
Status check_error_feedback_inner(const std::string& outer, const Compressor& inner);

// The entries of memories.cc's families.
CompressorEntry ef_entry();
CompressorEntry resireduce_entry();
CompressorEntry momentum_entry();

}  // namespace frugal::memory_internal
