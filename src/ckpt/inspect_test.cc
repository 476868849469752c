#include "ckpt/inspect.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <random>

#include "ckpt/files.h"
#include "ckpt/files_test_util.h"
#include "ckpt/shard_file.h"

namespace frugal::ckpt {
namespace {

using testing::read_file;
using testing::TempDir;
using testing::write_file;

// --- files.h -----------------------------------------------------------------------------------

TEST(Files, Names) {
  EXPECT_EQ(step_dir_name(120), "step-000000120");
  EXPECT_EQ(step_dir_name(0), "step-000000000");
  EXPECT_EQ(step_dir_name(12345678901), "step-12345678901");
  EXPECT_EQ(tmp_step_dir_name(120, "abc"), "step-000000120.tmp-abc");
  EXPECT_EQ(shard_file_name(3, 8), "shard-00003-of-00008.bin");

  EXPECT_EQ(parse_step_dir_name("step-000000120"), 120);
  EXPECT_EQ(parse_step_dir_name("step-12345678901"), 12345678901);
  for (std::string_view bad :
       {"step-", "step-12a", "step-000000120.tmp-abc", "step--1", "step-+1", "xstep-1",
        "step-000000120 ", "LATEST", "step-99999999999999999999999"}) {
    EXPECT_FALSE(parse_step_dir_name(bad).has_value()) << bad;
  }
  EXPECT_TRUE(is_tmp_step_dir_name("step-000000120.tmp-abc"));
  EXPECT_FALSE(is_tmp_step_dir_name("step-000000120"));
  EXPECT_FALSE(is_tmp_step_dir_name("step-000000120.tmp-"));
  EXPECT_FALSE(is_tmp_step_dir_name("step-x.tmp-abc"));
  EXPECT_FALSE(is_tmp_step_dir_name("MANIFEST.tmp"));
}

TEST(Files, WriteAtomicallyMakeListRemove) {
  TempDir dir;
  const std::string nested = dir / "a/b/c";
  ASSERT_TRUE(make_directories(nested).is_ok());
  ASSERT_TRUE(make_directories(nested + "/").is_ok());  // already there: fine
  ASSERT_TRUE(write_file_atomically(nested + "/f", "first").is_ok());
  ASSERT_TRUE(write_file_atomically(nested + "/f", "second").is_ok());
  EXPECT_EQ(read_small_file(nested + "/f").value(), "second");
  EXPECT_FALSE(std::filesystem::exists(nested + "/f.tmp"));
  ASSERT_TRUE(write_file_atomically(nested + "/e", "").is_ok());
  EXPECT_EQ(read_small_file(nested + "/e").value(), "");
  EXPECT_EQ(read_small_file(nested + "/f", 3).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(list_directory(nested).value(), (std::vector<std::string>{"e", "f"}));

  ASSERT_TRUE(rename_durably(nested + "/f", dir / "a/g").is_ok());
  EXPECT_EQ(read_small_file(dir / "a/g").value(), "second");
  EXPECT_TRUE(fsync_directory(dir.path()).is_ok());

  const Status missing = read_small_file(dir / "nope").status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_NE(missing.message().find(dir / "nope"), std::string::npos);
  EXPECT_NE(missing.message().find("No such file or directory"), std::string::npos);
  EXPECT_EQ(list_directory(dir / "nope").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(make_directories(dir / "a/g/x").code(), StatusCode::kFailedPrecondition);

  ASSERT_TRUE(remove_tree(dir / "a").is_ok());
  EXPECT_FALSE(std::filesystem::exists(dir / "a"));
  EXPECT_TRUE(remove_tree(dir / "a").is_ok());  // no error if it does not exist
}

// --- checkpoints -------------------------------------------------------------------------------

struct CheckpointSpec {
  std::string run_id = "run-a";
  int64_t step = 10;
  int world = 3;
  int64_t chunk_bytes = 256;
  uint64_t seed = 1;
};

// Writes a committed checkpoint as the commit protocol does: shards and MANIFEST into a
// temporary step directory, renamed into place, then LATEST. Returns the step directory.
std::string write_checkpoint(const std::string& root, const CheckpointSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  std::vector<EntryInfo> entries = {{"param/w", DType::kF32, {40, 10}, 1600},
                                    {"param/b", DType::kF32, {10}, 40},
                                    {"optim/w/exp_avg", DType::kF32, {40, 10}, 1600}};
  Manifest manifest;
  manifest.run_id = spec.run_id;
  manifest.step = spec.step;
  manifest.world_size = spec.world;
  manifest.chunk_bytes = spec.chunk_bytes;
  manifest.created_unix_ms = 1714560000000;
  manifest.replicated = pack(entries);
  manifest.meta = {{"model", "mlp"}, {"step", spec.step}};
  std::string replicated(static_cast<size_t>(manifest.replicated.total), '\0');
  for (char& c : replicated) c = static_cast<char>(rng());

  const std::string tmp = root + "/" + tmp_step_dir_name(spec.step, spec.run_id);
  EXPECT_TRUE(make_directories(tmp).is_ok());
  for (int rank = 0; rank < spec.world; ++rank) {
    const ByteRange share =
        partition(manifest.replicated.total, rank, spec.world, spec.chunk_bytes);
    std::string data = replicated.substr(share.lo, share.size());
    ShardContents contents{share, {}};
    // Per-rank state: an error-feedback residual of a size that differs by rank.
    const EntryInfo residual{"ef/w", DType::kF32, {rank + 1, 10}, (rank + 1) * 40};
    contents.records.push_back({residual, share.size()});
    for (int64_t i = 0; i < residual.bytes; ++i) data += static_cast<char>(rng());

    const std::string file = shard_file_name(rank, spec.world);
    auto writer = ShardWriter::create(tmp + "/" + file,
                                      {spec.run_id, spec.step, rank, spec.world, spec.chunk_bytes});
    EXPECT_TRUE(writer.is_ok());
    EXPECT_TRUE(writer.value()
                    ->append({reinterpret_cast<const std::byte*>(data.data()), data.size()})
                    .is_ok());
    Result<ShardInfo> info = writer.value()->finish(contents);
    EXPECT_TRUE(info.is_ok()) << info.status().to_string();
    manifest.shards.push_back(
        {file, rank, info->file_bytes, info->footer_hash, share, contents.records});
  }
  EXPECT_TRUE(
      write_file_atomically(tmp + "/" + std::string(kManifestName), encode_manifest(manifest))
          .is_ok());
  const std::string step_dir = root + "/" + step_dir_name(spec.step);
  EXPECT_TRUE(rename_durably(tmp, step_dir).is_ok());
  EXPECT_TRUE(
      write_file_atomically(root + "/" + std::string(kLatestName), step_dir_name(spec.step) + "\n")
          .is_ok());
  return step_dir;
}

std::string shard_path(const std::string& step_dir, int rank, int world) {
  return step_dir + "/" + shard_file_name(rank, world);
}

int64_t file_size(const std::string& path) {
  return static_cast<int64_t>(std::filesystem::file_size(path));
}

void expect_data_loss(const Status& status, const std::string& substring) {
  EXPECT_EQ(status.code(), StatusCode::kDataLoss) << status.to_string();
  EXPECT_NE(status.message().find(substring), std::string::npos)
      << "expected '" << substring << "' in: " << status.message();
}

TEST(Inspect, ListsCommittedUnfinishedAndLatest) {
  TempDir root;
  write_checkpoint(root.path(), {.step = 20});
  const std::string step10 = write_checkpoint(root.path(), {.step = 10, .world = 2});
  ASSERT_TRUE(make_directories(root / tmp_step_dir_name(30, "run-a")).is_ok());
  ASSERT_TRUE(make_directories(root / "step-000000040").is_ok());  // no MANIFEST
  write_file(root / "step-000000050", "a file, not a directory");
  write_file(root / "notes.txt", "ignored");

  Result<DirectoryListing> listing = list_checkpoints(root.path());
  ASSERT_TRUE(listing.is_ok()) << listing.status().to_string();
  const auto& checkpoints = listing->checkpoints;
  ASSERT_EQ(checkpoints.size(), 3u);
  EXPECT_EQ(checkpoints[0].step, 10);
  EXPECT_EQ(checkpoints[0].path, step10);
  ASSERT_TRUE(checkpoints[0].manifest.has_value()) << checkpoints[0].problem;
  EXPECT_EQ(checkpoints[0].manifest->world_size, 2);
  EXPECT_EQ(checkpoints[0].total_bytes,
            file_size(shard_path(step10, 0, 2)) + file_size(shard_path(step10, 1, 2)));
  EXPECT_EQ(checkpoints[1].step, 20);
  EXPECT_TRUE(checkpoints[1].manifest.has_value());
  EXPECT_EQ(checkpoints[2].step, 40);
  EXPECT_FALSE(checkpoints[2].manifest.has_value());
  EXPECT_NE(checkpoints[2].problem.find("MANIFEST"), std::string::npos) << checkpoints[2].problem;
  EXPECT_EQ(listing->unfinished, (std::vector<std::string>{root / "step-000000030.tmp-run-a"}));
  EXPECT_EQ(listing->latest, "step-000000010");  // the last one written

  const Status missing = list_checkpoints(root / "nope").status();
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), root / "nope" + ": no such directory");
}

TEST(Inspect, VerifiesAGoodCheckpoint) {
  TempDir root;
  const std::string step_dir = write_checkpoint(root.path(), {});
  Result<VerifySummary> summary = verify_checkpoint_summary(step_dir);
  ASSERT_TRUE(summary.is_ok()) << summary.status().to_string();
  EXPECT_EQ(summary->step, 10);
  int64_t bytes = 0;
  int64_t chunks = 0;
  for (int rank = 0; rank < 3; ++rank) {
    const std::string path = shard_path(step_dir, rank, 3);
    bytes += file_size(path);
    Result<ShardInfo> info = read_shard_info(path);
    ASSERT_TRUE(info.is_ok());
    chunks += (info->data_bytes + 255) / 256;
  }
  EXPECT_EQ(summary->bytes, bytes);
  EXPECT_EQ(summary->chunks, chunks);
  EXPECT_TRUE(verify_checkpoint(step_dir + "/").is_ok());
}

TEST(Inspect, RejectsAShardFromAnotherRunOrStep) {
  TempDir root;
  TempDir other;
  const std::string step_dir = write_checkpoint(root.path(), {.run_id = "run-a"});
  // Same step and layout, another run: the header's run id differs (byte offset 16).
  const std::string other_run = write_checkpoint(other.path(), {.run_id = "run-b"});
  const std::string target = shard_path(step_dir, 1, 3);
  const std::string original = read_file(target);
  write_file(target, read_file(shard_path(other_run, 1, 3)));
  expect_data_loss(verify_checkpoint(step_dir),
                   target +
                       ": shard from another run or step: its header says run 'run-b' step "
                       "10 rank 1 of 3, the manifest expects run 'run-a' step 10 rank 1 of "
                       "3 at byte offset 16");
  // Same run, another step (byte offset 48).
  const std::string other_step = write_checkpoint(other.path(), {.run_id = "run-a", .step = 11});
  write_file(target, read_file(shard_path(other_step, 1, 3)));
  expect_data_loss(verify_checkpoint(step_dir), target + ": shard from another run or step");
  expect_data_loss(verify_checkpoint(step_dir), "at byte offset 48");
  // Another rank's shard in this slot (byte offset 56).
  write_file(target, read_file(shard_path(step_dir, 2, 3)));
  expect_data_loss(verify_checkpoint(step_dir),
                   "rank 2 of 3, the manifest expects run 'run-a' "
                   "step 10 rank 1 of 3 at byte offset 56");
  write_file(target, original);
  EXPECT_TRUE(verify_checkpoint(step_dir).is_ok());
}

TEST(Inspect, NamesTheFileAndOffsetOfCorruptData) {
  TempDir root;
  const std::string step_dir = write_checkpoint(root.path(), {});
  const std::string target = shard_path(step_dir, 2, 3);
  std::string bytes = read_file(target);
  bytes[128 + 300] ^= 0x01;  // data byte 300 lies in chunk 1, at file offset 128 + 256
  write_file(target, bytes);
  const Status status = verify_checkpoint(step_dir);
  expect_data_loss(status, target + ": data chunk 1 of ");
  expect_data_loss(status, "does not match its hash at byte offset 384");
  // The listing reads manifests only, so it still shows the checkpoint as ok.
  Result<DirectoryListing> listing = list_checkpoints(root.path());
  ASSERT_TRUE(listing.is_ok());
  EXPECT_TRUE(listing->checkpoints[0].manifest.has_value());
}

TEST(Inspect, RejectsMissingAndTruncatedShards) {
  TempDir root;
  const std::string step_dir = write_checkpoint(root.path(), {});
  const std::string target = shard_path(step_dir, 0, 3);
  const std::string original = read_file(target);
  write_file(target, original.substr(0, original.size() - 1));
  expect_data_loss(verify_checkpoint(step_dir), target + ": no \"FRUGALND\" trailer magic");
  std::filesystem::remove(target);
  expect_data_loss(verify_checkpoint(step_dir), target + ": missing shard file");
}

// Rewrites the step directory's manifest after `edit`.
void edit_manifest(const std::string& step_dir, const std::function<void(Manifest&)>& edit) {
  const std::string path = step_dir + "/MANIFEST";
  Result<Manifest> manifest = parse_manifest(read_file(path), path);
  ASSERT_TRUE(manifest.is_ok()) << manifest.status().to_string();
  edit(manifest.value());
  ASSERT_TRUE(write_file_atomically(path, encode_manifest(manifest.value())).is_ok());
}

TEST(Inspect, ComparesShardsWithTheManifest) {
  TempDir root;
  const std::string step_dir = write_checkpoint(root.path(), {});
  const std::string shard1 = shard_path(step_dir, 1, 3);
  const int64_t size1 = file_size(shard1);

  edit_manifest(step_dir, [](Manifest& m) { m.shards[1].file_bytes += 8; });
  expect_data_loss(verify_checkpoint(step_dir), shard1 + ": the file is " + std::to_string(size1) +
                                                    " bytes, the manifest says " +
                                                    std::to_string(size1 + 8) + " at byte offset " +
                                                    std::to_string(size1));
  edit_manifest(step_dir, [](Manifest& m) {
    m.shards[1].file_bytes -= 8;
    m.shards[1].footer_hash ^= 1;
  });
  expect_data_loss(verify_checkpoint(step_dir),
                   shard1 + ": footer hash differs from the manifest's at byte offset " +
                       std::to_string(size1 - 16));
  edit_manifest(step_dir, [](Manifest& m) {
    m.shards[1].footer_hash ^= 1;
    m.shards[1].records[0].info.name = "ef/other";
  });
  expect_data_loss(verify_checkpoint(step_dir), shard1 + ": records differ from the manifest's");
  edit_manifest(step_dir, [](Manifest& m) {
    m.shards[1].records[0].info.name = "ef/w";
    m.step = 12;
  });
  expect_data_loss(verify_checkpoint(step_dir),
                   "field 'step' is 12, but the directory is " + step_dir_name(10));
  edit_manifest(step_dir, [](Manifest& m) { m.step = 10; });
  EXPECT_TRUE(verify_checkpoint(step_dir).is_ok());
}

TEST(Inspect, ManifestProblems) {
  TempDir root;
  const std::string step_dir = write_checkpoint(root.path(), {});
  const std::string manifest = step_dir + "/MANIFEST";
  std::string text = read_file(manifest);
  text[text.find("run-a")] = 'R';
  write_file(manifest, text);
  expect_data_loss(verify_checkpoint(step_dir), manifest + ": hash mismatch");
  Result<DirectoryListing> listing = list_checkpoints(root.path());
  ASSERT_TRUE(listing.is_ok());
  EXPECT_FALSE(listing->checkpoints[0].manifest.has_value());
  EXPECT_NE(listing->checkpoints[0].problem.find("hash mismatch"), std::string::npos);

  std::filesystem::remove(manifest);
  expect_data_loss(verify_checkpoint(step_dir), manifest + ": cannot open");
  EXPECT_EQ(verify_checkpoint(root / "step-000000099").code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace frugal::ckpt
