// What rank 0 of `frugal train` shows and writes while training: a live progress bar on a
// terminal (or plain periodic lines otherwise), epoch lines, JSON-lines metrics, and at the end
// the summary JSON and a short human summary. Used by the rank-0 training thread only.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "core/metrics.h"
#include "torch/trainer.h"

namespace frugal::cli {

enum class ProgressMode { kAuto, kBar, kLines, kOff };

struct ReportOptions {
  ProgressMode progress = ProgressMode::kAuto;
  int64_t log_every = 0;  // steps between plain lines and metrics records; 0 = ~10 per epoch
  std::string metrics_path;
  std::string summary_path;
};

class TrainReporter final : public TrainObserver {
 public:
  // `run_info` (model, dataset, world size, config, ...) is copied into the summary.
  static Result<std::unique_ptr<TrainReporter>> create(const ReportOptions& options,
                                                       int64_t steps_per_epoch, int64_t total_steps,
                                                       int64_t num_epochs, nlohmann::json run_info);
  void on_step(const StepReport& report) override;
  void on_epoch(const EpochReport& report) override;
  // Writes the summary file (if asked) and prints the human summary.
  Status finish(const TrainSummary& summary, double wall_seconds);

 private:
  TrainReporter(const ReportOptions& options, int64_t steps_per_epoch, int64_t total_steps,
                int64_t num_epochs, nlohmann::json run_info, std::unique_ptr<MetricsSink> sink);
  double eta_seconds(const StepReport& report) const;
  void draw_bar(const StepReport& report, double samples_per_s);
  void end_bar_line();
  void record_write(const Status& status);

  ReportOptions options_;
  const int64_t steps_per_epoch_, total_steps_, num_epochs_;
  nlohmann::json run_info_;
  std::unique_ptr<MetricsSink> metrics_;
  bool bar_ = false;        // drawing a bar on stderr
  bool bar_drawn_ = false;  // the cursor sits at the end of a bar line
  int64_t last_draw_us_ = 0;
  // Throughput over the last logging window.
  int64_t last_samples_ = 0;
  int64_t window_samples_ = 0;
  double window_seconds_ = 0;
  double recent_samples_per_s_ = 0;
  Status write_error_;  // first failure writing metrics (reported at the end)
};

}  // namespace frugal::cli
