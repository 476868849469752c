#include "cli/ckpt_command.h"

#include <sys/stat.h>

#include <cinttypes>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>

#include "ckpt/files.h"
#include "ckpt/inspect.h"
#include "cli/launch.h"

namespace frugal::cli {
namespace {

using nlohmann::json;

// "512 B", "6.2 KiB", "1.5 GiB".
std::string human_bytes(int64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double value = static_cast<double>(bytes);
  size_t unit = 0;
  while (value >= 1024 && unit + 1 < std::size(kUnits)) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  if (unit == 0) {
    std::snprintf(text, sizeof(text), "%" PRId64 " B", bytes);
  } else {
    std::snprintf(text, sizeof(text), "%.1f %s", value, kUnits[unit]);
  }
  return text;
}

// "2024-05-01T10:40:00Z".
std::string utc_iso(int64_t unix_ms) {
  const std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  char text[32];
  if (gmtime_r(&seconds, &tm) == nullptr ||
      std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
    return "?";
  }
  return text;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

std::string status_text(const ckpt::CheckpointListing& c) { return c.manifest ? "ok" : c.problem; }

// The newest checkpoint whose manifest is valid, or null.
const ckpt::CheckpointListing* newest_valid(const ckpt::DirectoryListing& listing) {
  for (auto it = listing.checkpoints.rbegin(); it != listing.checkpoints.rend(); ++it) {
    if (it->manifest) return &*it;
  }
  return nullptr;
}

std::string inspect_text(const std::string& dir, const ckpt::DirectoryListing& listing) {
  std::string text;
  char line[512];
  if (listing.checkpoints.empty()) {
    text += "No committed checkpoints in " + dir + "\n";
  } else {
    text += "Checkpoints in " + dir + ":\n";
    std::snprintf(line, sizeof(line), "  %-15s %6s %11s %7s  %-21s %s\n", "step", "world", "size",
                  "shards", "created (UTC)", "status");
    text += line;
  }
  for (const ckpt::CheckpointListing& c : listing.checkpoints) {
    const ckpt::Manifest* m = c.manifest ? &*c.manifest : nullptr;
    std::snprintf(line, sizeof(line), "  %-15" PRId64 " %6s %11s %7s  %-21s ", c.step,
                  m ? std::to_string(m->world_size).c_str() : "-",
                  human_bytes(c.total_bytes).c_str(),
                  m ? std::to_string(m->shards.size()).c_str() : "-",
                  m ? utc_iso(m->created_unix_ms).c_str() : "-");
    text += line + status_text(c) + "\n";
  }
  text += "Unfinished saves:";
  if (listing.unfinished.empty()) text += " none";
  for (const std::string& path : listing.unfinished) text += " " + ckpt::base_name(path);
  text += "\nLATEST: " + listing.latest.value_or("(none)") + "\n";
  if (const ckpt::CheckpointListing* newest = newest_valid(listing)) {
    text += "Meta of " + ckpt::base_name(newest->path) + " (the newest valid checkpoint):\n" +
            newest->manifest->meta.dump(2) + "\n";
  }
  return text;
}

json inspect_json(const std::string& dir, const ckpt::DirectoryListing& listing) {
  json checkpoints = json::array();
  for (const ckpt::CheckpointListing& c : listing.checkpoints) {
    json entry = {{"step", c.step},
                  {"path", c.path},
                  {"total_bytes", c.total_bytes},
                  {"status", status_text(c)}};
    if (c.manifest) {
      entry["run_id"] = c.manifest->run_id;
      entry["world_size"] = c.manifest->world_size;
      entry["shards"] = c.manifest->shards.size();
      entry["created_unix_ms"] = c.manifest->created_unix_ms;
      entry["created"] = utc_iso(c.manifest->created_unix_ms);
    }
    checkpoints.push_back(std::move(entry));
  }
  json out = {{"dir", dir},
              {"checkpoints", std::move(checkpoints)},
              {"unfinished", listing.unfinished},
              {"latest", listing.latest ? json(*listing.latest) : json(nullptr)},
              {"newest_valid", nullptr}};
  if (const ckpt::CheckpointListing* newest = newest_valid(listing)) {
    out["newest_valid"] = {
        {"step", newest->step}, {"path", newest->path}, {"meta", newest->manifest->meta}};
  }
  return out;
}

struct InspectFlags {
  std::string dir;
  bool json = false;
};

int run_inspect(const InspectFlags& flags) {
  Result<ckpt::DirectoryListing> listing = ckpt::list_checkpoints(flags.dir);
  if (!listing.is_ok()) return report_error(listing.status());
  // Names in checkpoints are user data: replace invalid UTF-8 rather than throw.
  const std::string text = flags.json
                               ? inspect_json(flags.dir, listing.value())
                                         .dump(2, ' ', false, json::error_handler_t::replace) +
                                     "\n"
                               : inspect_text(flags.dir, listing.value());
  std::fputs(text.c_str(), stdout);
  return 0;
}

// The step directories `dir` stands for: itself if it is one (by name, or because it holds a
// MANIFEST), otherwise every committed checkpoint under it.
Result<std::vector<std::string>> verify_targets(const std::string& dir) {
  FRUGAL_ASSIGN_OR_RETURN(ckpt::DirectoryListing listing, ckpt::list_checkpoints(dir));
  if (ckpt::parse_step_dir_name(ckpt::base_name(dir)) ||
      exists(ckpt::join_path(dir, ckpt::kManifestName))) {
    return std::vector<std::string>{dir};
  }
  std::vector<std::string> targets;
  for (const ckpt::CheckpointListing& c : listing.checkpoints) targets.push_back(c.path);
  if (targets.empty()) return failed_precondition("no checkpoints in " + dir);
  return targets;
}

int run_verify(const std::string& dir) {
  Result<std::vector<std::string>> targets = verify_targets(dir);
  if (!targets.is_ok()) return report_error(targets.status());
  bool all_ok = true;
  for (const std::string& step_dir : targets.value()) {
    Result<ckpt::VerifySummary> summary = ckpt::verify_checkpoint_summary(step_dir);
    if (summary.is_ok()) {
      std::printf("ok %s (%" PRId64 " bytes, %" PRId64 " chunks)\n",
                  ckpt::base_name(step_dir).c_str(), summary->bytes, summary->chunks);
    } else {
      std::printf("FAIL %s: %s\n", ckpt::base_name(step_dir).c_str(),
                  summary.status().message().c_str());
      all_ok = false;
    }
    std::fflush(stdout);
  }
  return all_ok ? 0 : 1;
}

}  // namespace

void add_ckpt_commands(CLI::App& app, int& exit_code) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Inspect and verify checkpoint directories");
  ckpt->require_subcommand(1);

  auto inspect_flags = std::make_shared<InspectFlags>();
  CLI::App* inspect = ckpt->add_subcommand(
      "inspect",
      "List the checkpoints in DIR: step, world size, size, shards, creation time and whether "
      "the manifest is valid; unfinished saves; LATEST; and the newest valid checkpoint's meta");
  inspect->add_option("dir", inspect_flags->dir, "Checkpoint directory (the --checkpoint-dir)")
      ->required();
  inspect->add_flag("--json", inspect_flags->json, "Print the same as one JSON object");
  inspect->callback([inspect_flags, &exit_code] { exit_code = run_inspect(*inspect_flags); });

  auto verify_dir = std::make_shared<std::string>();
  CLI::App* verify = ckpt->add_subcommand(
      "verify",
      "Check every byte of every committed checkpoint in DIR (or of DIR, a step directory) "
      "against its hashes; exit 0 only if all are intact and there is at least one");
  verify->add_option("dir", *verify_dir, "Checkpoint directory, or one step-NNNNNNNNN in it")
      ->required();
  verify->callback([verify_dir, &exit_code] { exit_code = run_verify(*verify_dir); });
}

}  // namespace frugal::cli
