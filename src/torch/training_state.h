// TrainingState: everything a resumed run needs from one rank's model, optimizers and compressor,
// presented to the checkpoint library (ckpt/) as named byte ranges, and put back from a restored
// checkpoint. Entry names are stable across runs: "param/<name>", "buffer/<name>",
// "optim/<param>/<field>" (replicated: identical on every rank) and "compress/<key>" (per rank:
// error-feedback residuals and the like differ between ranks).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpointer.h"
#include "ckpt/restore.h"
#include "compress/compressor.h"
#include "core/status.h"
#include "engine/synchronizer.h"
#include "torch/optimizer.h"

namespace frugal {

class TrainingState {
 public:
  // `optimizers[i]` is parameter i's. Materializes the optimizers' state, so every checkpoint of
  // the run holds the same entries. Everything passed in must outlive this object.
  TrainingState(const std::vector<std::string>& param_names,
                const std::vector<torch::Tensor>& params,
                const std::vector<std::pair<std::string, torch::Tensor>>& named_buffers,
                const std::vector<std::unique_ptr<torch::optim::Optimizer>>& optimizers,
                const OptimizerOptions& optimizer_options, Compressor* compressor,
                Synchronizer* sync);

  // The current state as checkpoint sources. The data stays valid until the next call: Adam's
  // step counters and the compressor's exported state are copied into members here.
  std::vector<ckpt::StateSource> sources();

  // Copies a restored checkpoint into the parameters, buffers, optimizers and compressor. Fails
  // naming the first entry that this run has and the checkpoint lacks (or the reverse), or whose
  // dtype or shape differ: a checkpoint of another model or optimizer.
  Status apply(const ckpt::RestoredState& restored);

 private:
  struct Slot {
    std::string name;
    torch::Tensor tensor;
    bool stable = true;  // unchanged until the next optimizer step
  };
  void add_optimizer_slots(size_t index, const std::string& param_name);

  std::vector<Slot> slots_;
  std::vector<torch::Tensor> params_;
  const std::vector<std::unique_ptr<torch::optim::Optimizer>>& optimizers_;
  const OptimizerOptions optimizer_options_;
  std::vector<std::pair<size_t, torch::Tensor>> step_mirrors_;  // (parameter index, mirror)
  Compressor* const compressor_;
  Synchronizer* const sync_;  // imports the compressor's state once it knows the tensors
  StateDict exported_;        // the compressor's state at the last sources()
};

}  // namespace frugal
