// Trainer: one rank of data-parallel training. It builds the model (rank 0's initial weights are
// broadcast), reads this rank's shard of the data, and runs forward, backward and the optimizer
// step; gradients go to the engine's Synchronizer from autograd hooks as backward produces them
// (as PyTorch DDP's reducer does), so communication overlaps backward, and the optimizer waits
// for the averaged gradients. Every rank of the communicator runs one Trainer with the same
// options. A Trainer is used by one thread; LibTorch stays behind this LibTorch-free header.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/timeline.h"
#include "engine/synchronizer.h"
#include "torch/train_options.h"

namespace frugal {

class Model;

struct EvalResult {
  int64_t samples = 0;      // test samples evaluated, over all ranks
  double loss = NAN;        // mean cross-entropy per prediction (per token for language models)
  double accuracy = NAN;    // image models: fraction correct
  double perplexity = NAN;  // language models: exp(loss)
};

struct StepReport {
  int64_t step = 0;  // steps done, 1-based
  int64_t total_steps = 0;
  int64_t epoch = 0;  // 0-based epoch of this step
  double loss = NAN;  // this rank's training loss on its batch
  double lr = 0;
  double step_seconds = 0;   // wall time of this step
  double train_seconds = 0;  // wall time of all steps so far (evaluation excluded)
  int64_t samples = 0;       // samples trained so far, all ranks
  StepStats sync;            // the Synchronizer's counters of this step
};

struct EpochReport {
  int64_t epoch = 0;        // 0-based
  int64_t step = 0;         // steps done at its end
  double train_loss = NAN;  // mean training loss over the epoch's batches and all ranks
  EvalResult eval;          // samples == 0 when evaluation is off
  double train_seconds = 0;
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t samples = 0;            // samples trained, all ranks
  double train_seconds = 0;       // wall time of the steps (evaluation excluded)
  double samples_per_s = 0;       // all ranks, after the timing warm-up steps
  double final_train_loss = NAN;  // of the last epoch
  EvalResult eval;                // the last evaluation
  // Per-step means of this rank's Synchronizer counters.
  double bytes_sent_per_step = 0, bytes_received_per_step = 0, dense_bytes_per_step = 0;
  double dense_wire_bytes_per_step = 0;  // what a dense ring allreduce would send
  double comm_ms_per_step = 0, wait_ms_per_step = 0;
  double compress_ms_per_step = 0, decompress_ms_per_step = 0;
  // Share of compressed tensors (over all steps) whose payload selected no element.
  double tensor_missing_rate = 0;
  int64_t residual_bytes = 0;  // the compressor's error-feedback memory at the end
  int num_buckets = 0;
  std::string compressor;  // canonical spec; "none" when dense
  // Checkpoints (all zero when off). Committed and failed are rank 0's view of the commits.
  int64_t resumed_from_step = -1;  // the step of the checkpoint this run resumed from
  int64_t checkpoints_saved = 0, checkpoints_committed = 0, checkpoints_failed = 0;
  double checkpoint_stall_ms_p50 = 0, checkpoint_stall_ms_max = 0;  // training thread blocked
};

class TrainObserver {
 public:
  virtual ~TrainObserver() = default;
  virtual void on_step(const StepReport&) {}
  virtual void on_epoch(const EpochReport&) {}
};

class Trainer {
 public:
  // Collective: every rank calls it with the same options. Loads the data, builds the model
  // (seeded), broadcasts rank 0's parameters and buffers, and registers every parameter with a
  // Synchronizer on `comm` in backward order. `comm` and `timeline` (optional) must outlive it.
  static Result<std::unique_ptr<Trainer>> create(Communicator& comm, TrainerOptions options,
                                                 Timeline* timeline = nullptr);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Collective: trains one step on this rank's next batch. Fills `report` if given.
  Status train_step(StepReport* report = nullptr);
  // Collective: loss and accuracy (or perplexity) on the test split, sharded across the ranks
  // and reduced; every rank gets the same result. Rank 0's buffers (BatchNorm statistics) are
  // broadcast first, so every rank evaluates the same model.
  Result<EvalResult> evaluate();
  // Collective: fails with the first parameter whose bytes differ between ranks (and which
  // ranks disagree with rank 0). run() calls it every check_replicas_every steps.
  Status check_replicas();
  // Collective: the whole schedule (total_steps() steps, evaluating at each epoch end).
  Result<TrainSummary> run(TrainObserver* observer = nullptr);

  const TrainerOptions& options() const;
  int64_t steps_per_epoch() const;
  int64_t total_steps() const;
  int64_t num_epochs() const;
  int64_t steps_done() const;
  int64_t parameter_count() const;
  std::string data_description() const;
  const Synchronizer& synchronizer() const;
  Model& model();

 private:
  struct Impl;
  explicit Trainer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal
