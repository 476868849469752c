#include "cli/train_command.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <memory>
#include <thread>

#include "ckpt/fault.h"
#include "cli/launch.h"
#include "cli/train_report.h"
#include "cli/validators.h"
#include "compress/registry.h"
#include "core/clock.h"
#include "core/cpu_affinity.h"
#include "core/logging.h"
#include "core/timeline.h"
#include "engine/fusion_plan.h"
#include "engine/gathered_trace.h"
#include "torch/models.h"
#include "torch/optimizer.h"
#include "torch/trainer.h"
#include "torch/training_data.h"

namespace frugal::cli {
namespace {

constexpr const char* kDefaultCompress = "ef(dgc:density=0.01)";

struct TrainFlags {
  int workers = 2;
  std::string backend = "gloo";
  TrainerOptions trainer;
  double lr = 0;  // 0: the optimizer's default
  std::string progress = "auto";
  ReportOptions report;
  std::string trace_path;
  // The best configuration measured on the emulated 1 Gbit/s cluster among those within 1 point
  // of dense accuracy (docs/benchmarks.md, "Compressed training on an emulated cluster").
  std::string compress = kDefaultCompress;
  std::string fusion = "safusion";
  // Explicit rather than "auto": which tensors are compressed then never depends on timings, so
  // runs repeat (the buckets still come from the cost model, and do not change the numbers of
  // per-tensor compression). 128K keeps small classifiers dense (mlp's 10x2048 layer is 80 KiB):
  // compressing them to 1% cost 0.3 points of accuracy with ef(dgc) and 0.5 with ef(adtopk) after
  // 3 epochs (docs/benchmarks.md), and their dense bytes ride in the allgather for little.
  std::string dense_below = "128K";
  std::string sync = "all";
  bool deterministic = false;
  bool bind_cores = false;
  double first_bucket_mb = 1;
  double own_bucket_mb = 4;
  int64_t timeout_ms = 120'000;
  bool timeout_given = false;  // set from the parse: --timeout-ms beats FRUGAL_TIMEOUT_MS
  std::string iface;
};

constexpr double kDefaultSgdLr = 0.05;
constexpr double kDefaultAdamLr = 1e-3;

// Ranks on this host, for the default thread count: the launcher's LOCAL_WORLD_SIZE, mpirun's
// OMPI_COMM_WORLD_LOCAL_SIZE, or the thread-ranks of the local backend. A bad environment is
// reported when the rank reads its CommConfig.
int local_ranks(const TrainFlags& flags) {
  if (flags.backend == "local") return flags.workers;
  auto config = comm_config_from_env(CommConfig{});
  return config.is_ok() ? std::max(1, config->local_size) : 1;
}

nlohmann::json config_json(const TrainFlags& f, const TrainerOptions& o, int world_size) {
  return {{"workers", world_size},
          {"backend", f.backend},
          {"model", o.model},
          {"dataset", o.data.dataset},
          {"data_dir", o.data.data_dir},
          {"data", o.data.data_path},
          {"seq_len", o.data.seq_len},
          {"epochs", o.epochs},
          {"steps", o.steps},
          {"batch_size", o.batch_size},
          {"optimizer", o.optimizer.name},
          {"lr", o.optimizer.lr},
          {"momentum", o.optimizer.momentum},
          {"nesterov", o.optimizer.nesterov},
          {"weight_decay", o.optimizer.weight_decay},
          {"lr_schedule", o.schedule.kind},
          {"warmup_steps", o.schedule.warmup_steps},
          {"seed", o.seed},
          {"threads", o.threads},
          {"sync", f.sync},
          {"compress", o.compress.empty() ? "none" : o.compress},
          {"fusion", f.fusion},
          {"dense_below", f.dense_below},
          {"first_bucket_mb", f.first_bucket_mb},
          {"own_bucket_mb", f.own_bucket_mb},
          {"check_replicas", o.check_replicas_every},
          {"deterministic", f.deterministic},
          {"bind_cores", f.bind_cores}};
}

// One rank's whole job. Rank 0 reports.
Status train_one_rank(Communicator& comm, const TrainFlags& flags, int64_t start_us) {
  TrainerOptions options = flags.trainer;
  Timeline timeline(comm.rank(), !flags.trace_path.empty());
  FRUGAL_ASSIGN_OR_RETURN(auto trainer, Trainer::create(comm, options, &timeline));
  std::unique_ptr<TrainReporter> reporter;
  Status reporter_status;
  if (comm.rank() == 0) {
    if (const std::string warning = memoryless_warning(options.compress); !warning.empty()) {
      spdlog::warn("{}", warning);
    }
    nlohmann::json info = {{"model", options.model},
                           {"parameters", trainer->parameter_count()},
                           {"dataset", trainer->data_description()},
                           {"world_size", comm.size()},
                           {"backend", flags.backend},
                           {"config", config_json(flags, options, comm.size())}};
    auto created = TrainReporter::create(flags.report, trainer->steps_per_epoch(),
                                         trainer->total_steps(), trainer->num_epochs(), info);
    reporter_status = created.status();
    if (created.is_ok()) reporter = std::move(created).value();
    if (reporter_status.is_ok() && flags.report.progress != ProgressMode::kOff) {
      std::printf(
          "frugal train: %s (%lld parameters) on %s; %d workers (%s), batch %lld per "
          "worker, %lld steps (%lld per epoch), %d thread(s) per worker\n",
          options.model.c_str(), static_cast<long long>(trainer->parameter_count()),
          trainer->data_description().c_str(), comm.size(), flags.backend.c_str(),
          static_cast<long long>(options.batch_size),
          static_cast<long long>(trainer->total_steps()),
          static_cast<long long>(trainer->steps_per_epoch()), options.threads);
      std::fflush(stdout);
    }
  }
  // Rank 0 alone opens the output files; tell every rank whether it could, so that a bad path
  // fails the whole job at once instead of leaving the others waiting in a collective.
  int32_t failed = reporter_status.is_ok() ? 0 : 1;
  FRUGAL_RETURN_IF_ERROR(comm.allreduce({&failed, DType::kI32, {1}}, ReduceOp::kMax));
  if (!reporter_status.is_ok()) return reporter_status;
  if (failed != 0) return aborted("rank 0 could not open its output files");
  FRUGAL_ASSIGN_OR_RETURN(TrainSummary summary, trainer->run(reporter.get()));
  if (!flags.trace_path.empty()) {
    FRUGAL_RETURN_IF_ERROR(write_gathered_trace(comm, timeline, flags.trace_path));
  }
  if (reporter != nullptr) {
    FRUGAL_RETURN_IF_ERROR(
        reporter->finish(summary, static_cast<double>(now_us() - start_us) * 1e-6));
  }
  return Status::ok();
}

// "auto" -> -1; otherwise a byte count with an optional K, M or G suffix (powers of 1024).
Result<int64_t> parse_dense_below(const std::string& text) {
  if (text == "auto") return int64_t{-1};
  const std::string invalid = "--dense-below '" + text +
                              "' is invalid; valid: auto, or a size in bytes such as 0, 4096, "
                              "64K, 1M";
  double value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc()) return invalid_argument(invalid);
  double scale = 1;
  const std::string suffix(end, text.data() + text.size());
  if (suffix == "K" || suffix == "k")
    scale = 1024.0;
  else if (suffix == "M" || suffix == "m")
    scale = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g")
    scale = 1024.0 * 1024 * 1024;
  else if (!suffix.empty())
    return invalid_argument(invalid);
  if (!(value >= 0) || value * scale > 1e15) return invalid_argument(invalid);
  return static_cast<int64_t>(value * scale);
}

// Fills the derived settings (learning rate, threads, bytes) and checks the flags.
Status resolve(TrainFlags& f) {
  if (f.workers < 1) {
    return invalid_argument("--workers " + std::to_string(f.workers) +
                            " is invalid; it must be >= 1");
  }
  TrainerOptions& o = f.trainer;
  o.optimizer.lr = f.lr > 0 ? f.lr : (o.optimizer.name == "sgd" ? kDefaultSgdLr : kDefaultAdamLr);
  if (f.lr < 0) return invalid_argument("--lr must be > 0");
  if (o.threads == 0) {
    // The CPUs this job may use (taskset, a cgroup's cpuset, mpirun's binding), not every CPU of
    // the machine, which would oversubscribe a narrower set.
    auto allowed = allowed_cpus();
    const int cores = allowed.is_ok() && !allowed->empty()
                          ? static_cast<int>(allowed->size())
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    o.threads = std::max(1, cores / local_ranks(f));
  }
  if (f.first_bucket_mb < 0 || f.own_bucket_mb < 0) {
    return invalid_argument("--first-bucket-mb and --own-bucket-mb must be >= 0");
  }
  o.own_bucket_bytes = static_cast<size_t>(f.own_bucket_mb * (1 << 20));
  o.first_bucket_bytes = static_cast<size_t>(f.first_bucket_mb * (1 << 20));
  FRUGAL_ASSIGN_OR_RETURN(FusionSpec fusion, parse_fusion(f.fusion));
  if (f.deterministic && (uses_cost_model(fusion.kind) || f.dense_below == "auto")) {
    // Cost-model plans come from measured timings, and the buckets decide how a dense allreduce
    // splits its buffer, hence the order of its floating-point sums: fixed buckets instead.
    if (uses_cost_model(fusion.kind)) fusion = FusionSpec{FusionKind::kBytes, size_t{25} << 20};
    if (f.dense_below == "auto") f.dense_below = "128K";
    f.fusion = fusion_to_string(fusion);  // the summary's config shows what ran
  }
  o.fusion = fusion.kind;
  o.fusion_threshold_bytes = fusion.bytes;
  FRUGAL_ASSIGN_OR_RETURN(o.dense_below_bytes, parse_dense_below(f.dense_below));
  o.sync = f.sync == "all";
  if (!o.sync && f.compress != kDefaultCompress && f.compress != "none") {
    return invalid_argument("--compress with --sync none: nothing is sent");
  }
  // --sync none sends nothing, so the default compressor does not apply to it.
  o.compress = o.sync ? f.compress : "none";
  if (!o.compress.empty() && o.compress != "none") {
    // Built once here so that a bad spec fails before any worker starts.
    CompressorContext context;
    context.world_size = f.workers;
    auto made = make_compressor(o.compress, context);
    if (!made.is_ok()) return made.status().with_context("--compress '" + o.compress + "'");
  }
  // Crash tests: FRUGAL_CKPT_FAULT (ckpt/fault.h), checked here so a typo fails at once.
  if (const char* fault = std::getenv("FRUGAL_CKPT_FAULT")) {
    o.checkpoint.fault = fault;
    const char* hang = std::getenv("FRUGAL_CKPT_HANG_SECONDS");
    o.checkpoint.fault_hang_seconds = hang != nullptr ? std::atof(hang) : 30.0;
    FRUGAL_RETURN_IF_ERROR(
        ckpt::parse_fault_plan(o.checkpoint.fault, o.checkpoint.fault_hang_seconds).status());
  }
  f.report.progress = f.progress == "bar"     ? ProgressMode::kBar
                      : f.progress == "lines" ? ProgressMode::kLines
                      : f.progress == "off"   ? ProgressMode::kOff
                                              : ProgressMode::kAuto;
  return Status::ok();
}

int run_train(TrainFlags flags, const std::vector<std::string>& argv) {
  const int64_t start_us = now_us();
  if (Status s = resolve(flags); !s.is_ok()) return report_error(s);
  RankJob job;
  job.backend = flags.backend;
  job.workers = flags.workers;
  job.timeout_ms = flags.timeout_ms;
  job.timeout_given = flags.timeout_given;
  job.iface = flags.iface;
  // Every rank runs the same program, so the per-collective consistency check (a small
  // allgather each time, milliseconds on gloo) would only cost time.
  job.check_consistency = false;
  job.bind_cores = flags.bind_cores;
  return run_job_ranks(job, argv,
                       [&](Communicator& comm) { return train_one_rank(comm, flags, start_us); });
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& info : model_catalog()) names.push_back(info.name);
  return names;
}

std::string model_help() {
  std::string help = "Model:";
  for (const auto& info : model_catalog()) help += "\n  " + info.name + ": " + info.summary;
  return help;
}

}  // namespace

void add_train_command(CLI::App& app, int& exit_code, const std::vector<std::string>& argv) {
  auto flags = std::make_shared<TrainFlags>();
  TrainerOptions& o = flags->trainer;
  CLI::App* train = app.add_subcommand(
      "train",
      "Train a model data-parallel on several workers (defaults: mlp on Fashion-MNIST, "
      "2 workers, 3 epochs)");

  train
      ->add_option("--workers", flags->workers,
                   "Ranks to start on this host (ignored under mpirun or with RANK/WORLD_SIZE "
                   "set, which give the ranks)")
      ->capture_default_str();
  train
      ->add_option("--backend", flags->backend,
                   "Communication: gloo (processes over TCP), mpi (processes via mpirun), "
                   "local (threads of one process)")
      ->check(CLI::IsMember({"local", "gloo", "mpi"}))
      ->capture_default_str();
  train->add_option("--model", o.model, model_help())
      ->check(CLI::IsMember(model_names()))
      ->capture_default_str();
  train
      ->add_option("--dataset", o.data.dataset,
                   "fashion-mnist, text (--data), synthetic (generated), or auto: "
                   "fashion-mnist for image models, text for language models")
      ->check(CLI::IsMember(dataset_names()))
      ->capture_default_str();
  train->add_option("--data-dir", o.data.data_dir,
                    "Fashion-MNIST directory (gzipped IDX files; default: Debian's "
                    "dataset-fashion-mnist in /usr/share/datasets/fashion-mnist)");
  train->add_option("--data", o.data.data_path,
                    "Text file for the language models (character-level; the last 10% is the "
                    "test split)");
  train->add_option("--seq-len", o.data.seq_len, "Language models: tokens per sequence")
      ->check(positive())
      ->capture_default_str();
  train->add_option("--epochs", o.epochs, "Passes over the training data")
      ->check(positive())
      ->capture_default_str();
  train->add_option("--steps", o.steps, "Train exactly this many steps instead (0: use --epochs)")
      ->check(non_negative())
      ->capture_default_str();
  train->add_option("--batch-size", o.batch_size, "Samples per worker per step")
      ->check(positive())
      ->capture_default_str();
  train->add_option("--eval-batch-size", o.eval_batch_size, "Samples per evaluation batch")
      ->check(positive())
      ->capture_default_str();
  train->add_flag("!--no-eval", o.evaluate, "Skip evaluation on the test split");
  train->add_option("--optimizer", o.optimizer.name, "sgd, adam or adamw")
      ->check(CLI::IsMember(optimizer_names()))
      ->capture_default_str();
  train->add_option("--lr", flags->lr,
                    "Peak learning rate (default: 0.05 for sgd, 0.001 for adam and adamw)");
  train->add_option("--momentum", o.optimizer.momentum, "SGD momentum")->capture_default_str();
  train->add_flag("--nesterov", o.optimizer.nesterov, "SGD with Nesterov momentum");
  train
      ->add_option("--weight-decay", o.optimizer.weight_decay,
                   "L2 penalty (sgd, adam) or decoupled weight decay (adamw)")
      ->capture_default_str();
  train->add_option("--lr-schedule", o.schedule.kind, "constant, cosine or step (after warm-up)")
      ->check(CLI::IsMember(lr_schedule_kinds()))
      ->capture_default_str();
  train->add_option("--warmup-steps", o.schedule.warmup_steps, "Linear learning-rate warm-up steps")
      ->capture_default_str();
  train
      ->add_option("--min-lr-ratio", o.schedule.min_lr_ratio,
                   "Cosine: final learning rate as a fraction of the peak")
      ->capture_default_str();
  train->add_option("--lr-step-size", o.schedule.step_size, "Step schedule: steps between decays")
      ->capture_default_str();
  train->add_option("--lr-gamma", o.schedule.gamma, "Step schedule: decay factor")
      ->capture_default_str();
  train->add_option("--seed", o.seed, "Seed of the weights, the shuffling and synthetic data")
      ->capture_default_str();
  train
      ->add_option("--threads", o.threads,
                   "LibTorch threads per worker (default: the CPUs this job may use / workers on "
                   "this host, so workers x threads <= CPUs)")
      ->check(non_negative());
  train
      ->add_option("--sync", flags->sync,
                   "Gradient synchronization: all, or none (each worker trains alone: a "
                   "local-SGD upper bound for benchmarks)")
      ->check(CLI::IsMember({"all", "none"}))
      ->capture_default_str();
  train
      ->add_option("--compress", flags->compress,
                   "Gradient compressor spec (e.g. adtopk:density=0.01, ef(topk:density=0.01), "
                   "ef(dgc:density=0.01), fp16, powersgd:rank=4; `frugal bench compress --list` "
                   "lists them); none: dense allreduce")
      ->capture_default_str();
  train
      ->add_option("--fusion", flags->fusion,
                   "Gradient fusion: none (per tensor, WFBP), bytes:MB (Horovod: fuse up to MB, "
                   "then compress the buffer), omgs (fuse, then compress each buffer whole: "
                   "sparsify-behind), safusion (compress each tensor as it is ready, fuse the "
                   "payloads; buffers from a profiled cost model), ssfusion (per tensor: "
                   "compress only where it pays)")
      ->capture_default_str();
  train
      ->add_option("--dense-below", flags->dense_below,
                   "Gradients smaller than this (bytes; K/M suffixes) skip the compressor and "
                   "go dense through allreduce; auto: the cost model's cut-off for "
                   "safusion/ssfusion, 0 for the others")
      ->capture_default_str();
  train
      ->add_option("--first-bucket-mb", flags->first_bucket_mb,
                   "Cap of the first bucket (the last layers' gradients), so communication "
                   "starts early")
      ->capture_default_str();
  train
      ->add_option("--own-bucket-mb", flags->own_bucket_mb,
                   "Gradients at least this big (MiB) skip fusion: each is reduced alone, in "
                   "place, saving two copies of its bytes (0: fuse by the threshold alone, as "
                   "DDP does)")
      ->capture_default_str();
  train
      ->add_option("--check-replicas", o.check_replicas_every,
                   "Debug: verify every N steps that all workers hold bit-identical parameters "
                   "(0: off)")
      ->check(non_negative())
      ->capture_default_str();
  train->add_flag("--bind-cores", flags->bind_cores, kBindCoresHelp);
  train->add_flag("--deterministic", flags->deterministic,
                  "Bit-reproducible runs: fixed fusion buckets (bytes:25) instead of a "
                  "timing-based plan, so a run resumed from a checkpoint follows the same loss "
                  "curve, bit for bit, as one that was never interrupted");
  CheckpointSettings& ck = o.checkpoint;
  train->add_option("--checkpoint-dir", ck.dir,
                    "Save checkpoints here (partitioned over the workers, crash-consistent; "
                    "the last one is saved after the final step)");
  train->add_option("--checkpoint-every", ck.every_steps, "Save every N steps (0: only at the end)")
      ->check(non_negative())
      ->capture_default_str();
  train
      ->add_option("--checkpoint-interval", ck.interval_seconds,
                   "Save about every T seconds of training instead (converted to steps from the "
                   "measured step time)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train->add_flag("--resume", ck.resume,
                  "Start from the newest valid checkpoint in --checkpoint-dir (from scratch if "
                  "there is none); any number of workers");
  train->add_option("--checkpoint-keep", ck.keep, "Committed checkpoints kept")
      ->check(positive())
      ->capture_default_str();
  train
      ->add_option("--checkpoint-mode", ck.mode,
                   "lazy: copy during the next step's forward and backward (AsymCheck); async: "
                   "copy at the save, write in the background; sync: copy, write and fsync "
                   "before training goes on")
      ->check(CLI::IsMember({"lazy", "async", "sync"}))
      ->capture_default_str();
  train
      ->add_option("--checkpoint-timeout", ck.commit_timeout_seconds,
                   "Seconds rank 0 waits for every worker's shard before it abandons a save")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  train->add_option("--metrics", flags->report.metrics_path,
                    "Write JSON lines: one per logged step and one per epoch");
  train->add_option("--summary", flags->report.summary_path,
                    "Write one JSON object at the end (accuracy or perplexity, samples/s, "
                    "bytes per step, resolved config)");
  train->add_option("--trace", flags->trace_path,
                    "Write a Chrome trace of every rank (open in ui.perfetto.dev)");
  train
      ->add_option("--log-every", flags->report.log_every,
                   "Steps between progress lines and metrics records (0: about 10 per epoch)")
      ->check(non_negative())
      ->capture_default_str();
  train
      ->add_option("--progress", flags->progress,
                   "auto (a bar on a terminal, lines otherwise), bar, lines or off")
      ->check(CLI::IsMember({"auto", "bar", "lines", "off"}))
      ->capture_default_str();
  train
      ->add_option("--timeout-ms", flags->timeout_ms,
                   "A collective that makes no progress this long fails (a dead or hung "
                   "worker); beats FRUGAL_TIMEOUT_MS")
      ->check(positive())
      ->capture_default_str();
  train->add_option("--iface", flags->iface,
                    "Network interface or address gloo binds to; beats FRUGAL_SOCKET_IFNAME "
                    "(default: that variable, else loopback for one host)");
  train->callback([flags, train, &exit_code, argv] {
    flags->timeout_given = train->count("--timeout-ms") > 0;
    exit_code = run_train(*flags, argv);
  });
}

}  // namespace frugal::cli
