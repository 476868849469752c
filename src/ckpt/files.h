// The durable file operations a crash-consistent checkpoint needs, on POSIX file descriptors:
// every write is followed by fsync before it is relied on, and every rename by an fsync of the
// parent directory (a rename is atomic but not durable until then). Names of the files and
// directories of a checkpoint directory:
//   DIR/step-000000120/                       a committed checkpoint (renamed into place)
//     shard-00000-of-00004.bin ...            one per writing rank
//     MANIFEST                                written last, by rank 0
//   DIR/step-000000140.tmp-<run id>/          a save in progress (or the leftover of a crash)
//   DIR/LATEST                                the newest committed step directory's name; a hint
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace frugal::ckpt {

inline constexpr std::string_view kManifestName = "MANIFEST";
inline constexpr std::string_view kLatestName = "LATEST";

std::string step_dir_name(int64_t step);                               // "step-000000120"
std::string tmp_step_dir_name(int64_t step, std::string_view run_id);  // "step-000000120.tmp-<id>"
std::string shard_file_name(int rank, int world);                      // "shard-00003-of-00008.bin"
// The step of a committed step directory's name; nullopt for anything else.
std::optional<int64_t> parse_step_dir_name(std::string_view name);
// True for the name of an unfinished save ("step-*.tmp-*").
bool is_tmp_step_dir_name(std::string_view name);

// "dir/name", without doubling a trailing slash of `dir`.
std::string join_path(std::string_view dir, std::string_view name);
// The last component of `path`, ignoring trailing slashes: "a/step-000000120/" -> "step-000000120".
std::string base_name(std::string_view path);

// Writes `contents` to `path` durably and atomically: path.tmp is written, fsynced, renamed to
// `path`, and the parent directory fsynced. A crash leaves either the old file or the new one.
Status write_file_atomically(const std::string& path, std::string_view contents);
// Reads a whole (small) file.
Result<std::string> read_small_file(const std::string& path, int64_t max_bytes = 64 << 20);
// fsync of a directory, so renames and creations inside it are durable.
Status fsync_directory(const std::string& dir);
// rename(2), then fsync of the destination's parent directory.
Status rename_durably(const std::string& from, const std::string& to);
// mkdir -p; fsyncs the parent of every directory it creates.
Status make_directories(const std::string& dir);
// rm -rf (no error if it does not exist).
Status remove_tree(const std::string& path);
// Names of the entries of a directory, sorted.
Result<std::vector<std::string>> list_directory(const std::string& dir);

}  // namespace frugal::ckpt
