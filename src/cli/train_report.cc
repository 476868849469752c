#include "cli/train_report.h"

#include <unistd.h>

#include <cmath>
#include <fstream>

#include "core/clock.h"

namespace frugal::cli {
namespace {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "--:--";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buffer[32];
  if (s >= 3600) {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buffer, sizeof buffer, "%lld:%02lld", static_cast<long long>(s / 60),
                  static_cast<long long>(s % 60));
  }
  return buffer;
}

std::string format_bytes(double bytes) {
  char buffer[32];
  if (bytes >= 1 << 20) {
    std::snprintf(buffer, sizeof buffer, "%.1f MiB", bytes / (1 << 20));
  } else if (bytes >= 1 << 10) {
    std::snprintf(buffer, sizeof buffer, "%.1f KiB", bytes / (1 << 10));
  } else {
    std::snprintf(buffer, sizeof buffer, "%.0f B", bytes);
  }
  return buffer;
}

// "test accuracy 88.1%, test loss 0.332" or "test perplexity 3.02, test loss 1.105".
std::string format_eval(const EvalResult& eval) {
  char buffer[96];
  if (!std::isnan(eval.accuracy)) {
    std::snprintf(buffer, sizeof buffer, "test accuracy %.2f%%, test loss %.4f",
                  100 * eval.accuracy, eval.loss);
  } else {
    std::snprintf(buffer, sizeof buffer, "test perplexity %.3f, test loss %.4f", eval.perplexity,
                  eval.loss);
  }
  return buffer;
}

nlohmann::json eval_json(const EvalResult& eval) {
  nlohmann::json j = nlohmann::json::object();
  if (eval.samples == 0) return j;
  j["test_loss"] = eval.loss;
  if (!std::isnan(eval.accuracy)) j["test_accuracy"] = eval.accuracy;
  if (!std::isnan(eval.perplexity)) j["test_perplexity"] = eval.perplexity;
  return j;
}

}  // namespace

Result<std::unique_ptr<TrainReporter>> TrainReporter::create(const ReportOptions& options,
                                                             int64_t steps_per_epoch,
                                                             int64_t total_steps,
                                                             int64_t num_epochs,
                                                             nlohmann::json run_info) {
  std::unique_ptr<MetricsSink> sink;
  if (!options.metrics_path.empty()) {
    // A fresh file per run: appending to an old run's records would mix two runs.
    auto opened = MetricsSink::open(options.metrics_path, MetricsSink::Mode::kTruncate);
    if (!opened.is_ok()) {
      return invalid_argument("cannot write --metrics file: " + opened.status().message());
    }
    sink = std::move(opened).value();
  }
  if (!options.summary_path.empty() && !std::ofstream(options.summary_path, std::ios::app)) {
    return invalid_argument("cannot write --summary file '" + options.summary_path + "'");
  }
  return std::unique_ptr<TrainReporter>(new TrainReporter(
      options, steps_per_epoch, total_steps, num_epochs, std::move(run_info), std::move(sink)));
}

TrainReporter::TrainReporter(const ReportOptions& options, int64_t steps_per_epoch,
                             int64_t total_steps, int64_t num_epochs, nlohmann::json run_info,
                             std::unique_ptr<MetricsSink> sink)
    : options_(options),
      steps_per_epoch_(steps_per_epoch),
      total_steps_(total_steps),
      num_epochs_(num_epochs),
      run_info_(std::move(run_info)),
      metrics_(std::move(sink)) {
  if (options_.log_every <= 0) options_.log_every = std::max<int64_t>(1, steps_per_epoch / 10);
  bar_ = options_.progress == ProgressMode::kBar ||
         (options_.progress == ProgressMode::kAuto && isatty(STDERR_FILENO));
}

void TrainReporter::on_step(const StepReport& r) {
  window_samples_ += r.samples - last_samples_;
  window_seconds_ += r.step_seconds;
  last_samples_ = r.samples;
  const bool log_now = r.step % options_.log_every == 0 || r.step == total_steps_;
  if (log_now && window_seconds_ > 0) {
    recent_samples_per_s_ = static_cast<double>(window_samples_) / window_seconds_;
    window_samples_ = 0;
    window_seconds_ = 0;
  }
  const double rate = recent_samples_per_s_ > 0 || window_seconds_ == 0
                          ? recent_samples_per_s_
                          : static_cast<double>(window_samples_) / window_seconds_;
  if (bar_) {
    const int64_t now = now_us();
    if (now - last_draw_us_ >= 100'000 || r.step == total_steps_) {
      last_draw_us_ = now;
      draw_bar(r, rate);
    }
  } else if (log_now && options_.progress != ProgressMode::kOff) {
    std::printf("step %lld/%lld  epoch %lld  loss %.4f  lr %.4g  %.0f samples/s  ETA %s\n",
                static_cast<long long>(r.step), static_cast<long long>(total_steps_),
                static_cast<long long>(r.epoch + 1), r.loss, r.lr, rate,
                format_duration(eta_seconds(r)).c_str());
    std::fflush(stdout);
  }
  if (log_now && metrics_ != nullptr) {
    record_write(
        metrics_->write({{"type", "step"},
                         {"step", r.step},
                         {"epoch", r.epoch},
                         {"loss", r.loss},
                         {"lr", r.lr},
                         {"samples", r.samples},
                         {"samples_per_s", rate},
                         {"step_ms", r.step_seconds * 1e3},
                         {"train_s", r.train_seconds},
                         {"bytes_sent", r.sync.bytes_sent},
                         {"bytes_received", r.sync.bytes_received},
                         {"dense_bytes", r.sync.dense_bytes},
                         {"dense_wire_bytes", r.sync.dense_wire_bytes},
                         {"buckets", r.sync.num_buckets},
                         {"compress_ms", static_cast<double>(r.sync.compress_us) * 1e-3},
                         {"decompress_ms", static_cast<double>(r.sync.decompress_us) * 1e-3},
                         {"comm_ms", static_cast<double>(r.sync.comm_us) * 1e-3},
                         {"exposed_comm_ms", static_cast<double>(r.sync.wait_us) * 1e-3},
                         {"tensors_compressed", r.sync.tensors_compressed},
                         {"tensors_missing", r.sync.tensors_missing},
                         {"residual_bytes", r.sync.residual_bytes}}));
  }
}

double TrainReporter::eta_seconds(const StepReport& r) const {
  // Training time per step so far times the steps left (evaluation not included).
  return r.train_seconds / static_cast<double>(r.step) * static_cast<double>(total_steps_ - r.step);
}

void TrainReporter::draw_bar(const StepReport& r, double rate) {
  constexpr int kWidth = 24;
  const double done = static_cast<double>(r.step) / static_cast<double>(total_steps_);
  const int filled = static_cast<int>(done * kWidth);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
  std::fprintf(
      stderr, "\repoch %lld/%lld [%s] %3.0f%% %lld/%lld  loss %.4f  %.0f samples/s  ETA %s\x1b[K",
      static_cast<long long>(r.epoch + 1), static_cast<long long>(num_epochs_), bar.c_str(),
      100 * done, static_cast<long long>(r.step), static_cast<long long>(total_steps_), r.loss,
      rate, format_duration(eta_seconds(r)).c_str());
  std::fflush(stderr);
  bar_drawn_ = true;
}

void TrainReporter::end_bar_line() {
  if (!bar_drawn_) return;
  std::fputc('\n', stderr);
  bar_drawn_ = false;
}

void TrainReporter::record_write(const Status& status) {
  if (!status.is_ok() && write_error_.is_ok()) write_error_ = status;
}

void TrainReporter::on_epoch(const EpochReport& r) {
  end_bar_line();
  if (options_.progress != ProgressMode::kOff) {
    std::printf("epoch %lld/%lld: train loss %.4f%s%s  (%.1f s training)\n",
                static_cast<long long>(r.epoch + 1), static_cast<long long>(num_epochs_),
                r.train_loss, r.eval.samples > 0 ? ", " : "",
                r.eval.samples > 0 ? format_eval(r.eval).c_str() : "", r.train_seconds);
    std::fflush(stdout);
  }
  if (metrics_ != nullptr) {
    nlohmann::json record = {{"type", "epoch"},
                             {"epoch", r.epoch},
                             {"step", r.step},
                             {"train_loss", r.train_loss},
                             {"train_s", r.train_seconds}};
    record.update(eval_json(r.eval));
    record_write(metrics_->write(record));
  }
}

Status TrainReporter::finish(const TrainSummary& s, double wall_seconds) {
  end_bar_line();
  nlohmann::json summary = run_info_;
  summary.update(eval_json(s.eval));
  summary.update({{"train_loss", s.final_train_loss},
                  {"samples_per_s", s.samples_per_s},
                  {"wall_s", wall_seconds},
                  {"train_s", s.train_seconds},
                  {"steps", s.steps},
                  {"samples", s.samples},
                  {"bytes_sent_per_step", s.bytes_sent_per_step},
                  {"bytes_received_per_step", s.bytes_received_per_step},
                  {"dense_bytes_per_step", s.dense_bytes_per_step},
                  {"dense_wire_bytes_per_step", s.dense_wire_bytes_per_step},
                  {"compressor", s.compressor},
                  {"compress_ms_per_step", s.compress_ms_per_step},
                  {"decompress_ms_per_step", s.decompress_ms_per_step},
                  {"comm_ms_per_step", s.comm_ms_per_step},
                  {"exposed_comm_ms_per_step", s.wait_ms_per_step},
                  {"tensor_missing_rate", s.tensor_missing_rate},
                  {"residual_bytes", s.residual_bytes},
                  {"buckets", s.num_buckets},
                  {"resumed_from_step", s.resumed_from_step},
                  {"checkpoints_saved", s.checkpoints_saved},
                  {"checkpoints_committed", s.checkpoints_committed},
                  {"checkpoints_failed", s.checkpoints_failed},
                  {"checkpoint_stall_ms_p50", s.checkpoint_stall_ms_p50},
                  {"checkpoint_stall_ms_max", s.checkpoint_stall_ms_max}});
  if (!options_.summary_path.empty()) {
    std::ofstream out(options_.summary_path, std::ios::trunc);
    out << summary.dump(2) << "\n";
    if (!out) return unavailable("cannot write --summary file '" + options_.summary_path + "'");
  }
  std::printf("done: %lld steps in %.1f s (%.1f s training); %s\n", static_cast<long long>(s.steps),
              wall_seconds, s.train_seconds,
              s.eval.samples > 0 ? format_eval(s.eval).c_str() : "no evaluation");
  std::printf(
      "      %.0f samples/s; sent %s/step (%s; a dense allreduce sends %s); compression "
      "%.1f ms/step; exposed communication %.1f ms/step\n",
      s.samples_per_s, format_bytes(s.bytes_sent_per_step).c_str(), s.compressor.c_str(),
      format_bytes(s.dense_wire_bytes_per_step).c_str(),
      s.compress_ms_per_step + s.decompress_ms_per_step, s.wait_ms_per_step);
  if (s.tensor_missing_rate > 0) {
    std::printf("      %.1f%% of compressed tensors sent no element (tensor missing)\n",
                100 * s.tensor_missing_rate);
  }
  if (s.resumed_from_step >= 0) {
    std::printf("      resumed from the checkpoint of step %lld\n",
                static_cast<long long>(s.resumed_from_step));
  }
  if (s.checkpoints_saved > 0) {
    std::printf(
        "      checkpoints: %lld saved, %lld committed, %lld failed; training blocked %.1f ms "
        "per save (median), %.1f ms at most\n",
        static_cast<long long>(s.checkpoints_saved),
        static_cast<long long>(s.checkpoints_committed),
        static_cast<long long>(s.checkpoints_failed), s.checkpoint_stall_ms_p50,
        s.checkpoint_stall_ms_max);
  }
  std::fflush(stdout);
  return write_error_;
}

}  // namespace frugal::cli
