// Everything that configures a training run, as plain structs: what `frugal train` parses its
// flags into and what the Trainer, the datasets and the optimizers take. LibTorch-free, so the
// command line compiles without LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/fusion_plan.h"
#include "torch/lr_schedule.h"

namespace frugal {

struct DataOptions {
  // "fashion-mnist", "synthetic" or "text"; "auto" picks fashion-mnist for image models and
  // text for language models.
  std::string dataset = "auto";
  std::string data_dir;   // fashion-mnist: the IDX directory ("" = Debian's)
  std::string data_path;  // text: the corpus file
  int64_t seq_len = 64;   // language models: tokens per training sequence
  uint64_t seed = 1;      // synthetic data
  int64_t synthetic_train_size = 60000;
  int64_t synthetic_test_size = 10000;
};

struct OptimizerOptions {
  std::string name = "sgd";  // "sgd", "adam" or "adamw"
  double lr = 0.05;
  double momentum = 0.9;  // sgd
  bool nesterov = false;  // sgd; needs momentum > 0
  // sgd and adam: L2 added to the gradient; adamw: decoupled decay (Loshchilov & Hutter).
  double weight_decay = 0.0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // adam, adamw
};

// Checkpoints (ckpt/): where, how often, and how they are written.
struct CheckpointSettings {
  std::string dir;              // empty: no checkpoints
  int64_t every_steps = 0;      // > 0: save every N steps
  double interval_seconds = 0;  // > 0: save about every T seconds of training (instead)
  bool resume = false;          // start from the newest valid checkpoint in dir, if any
  int keep = 2;                 // committed checkpoints kept
  // "lazy": copies spread over the next step's forward and backward (AsymCheck); "async": copy
  // at the save, persist in the background (CheckFreq); "sync": copy, write and fsync in place.
  std::string mode = "lazy";
  int64_t chunk_bytes = int64_t{4} << 20;
  double commit_timeout_seconds = 300;
  std::string fault;  // FRUGAL_CKPT_FAULT (ckpt/fault.h), for crash tests
  double fault_hang_seconds = 0;
};

struct TrainerOptions {
  std::string model = "mlp";
  DataOptions data;
  OptimizerOptions optimizer;
  LrSchedule schedule;
  int64_t epochs = 3;
  int64_t steps = 0;        // > 0: train exactly this many steps (epochs then follow from it)
  int64_t batch_size = 64;  // per worker
  int64_t eval_batch_size = 1000;
  bool evaluate = true;  // evaluate on the test split at each epoch end and at the end
  uint64_t seed = 1;     // weights, shuffling and synthetic data
  int threads = 0;       // this rank's LibTorch intra-op threads; 0 = leave as is
  // Gradient synchronization. false: none at all (each rank trains alone: a local-SGD upper
  // bound for benchmarks, never a sensible default).
  bool sync = true;
  // A compressor spec of the registry (compress/registry.h), e.g. "adtopk:density=0.01";
  // empty or "none": dense allreduce. Ignored with one worker (nothing is sent).
  std::string compress;
  FusionKind fusion = FusionKind::kBytes;  // the planner (engine/fusion_plan.h)
  // kBytes: fusion threshold; 0 = one bucket per tensor (WFBP).
  size_t fusion_threshold_bytes = size_t{25} << 20;
  size_t first_bucket_bytes = size_t{1} << 20;
  size_t own_bucket_bytes = 0;       // tensors this big are exchanged alone, in place (0: off)
  int64_t dense_below_bytes = -1;    // hybrid cut-off; -1: automatic (SynchronizerOptions)
  int64_t check_replicas_every = 0;  // > 0: verify bit-identical parameters every N steps
  CheckpointSettings checkpoint;
  // Steps left out of samples_per_s at the start (allocation, first-touch, connection set-up).
  int64_t timing_warmup_steps = 5;
};

}  // namespace frugal
