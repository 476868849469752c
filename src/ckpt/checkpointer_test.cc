// The save protocol and restore end to end, with ranks as threads of one process (local
// backend): round trips under resharding, torn-snapshot safety of lazy copies, garbage
// collection, fallback past a corrupt checkpoint, a failed rank and a hung rank.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>

#include "ckpt/checkpointer.h"
#include "ckpt/files.h"
#include "ckpt/persist.h"
#include "ckpt/restore.h"
#include "comm/testing/rank_runner.h"

namespace frugal::ckpt {
namespace {

namespace fs = std::filesystem;

// A rank's state: replicated tensors (the same bytes on every rank, drawn from the step) and
// per-rank ones (drawn from the step and the rank).
struct FakeState {
  std::vector<std::vector<float>> replicated;  // sizes below
  std::vector<int64_t> counter;                // replicated i64, changed eagerly
  std::vector<float> residual;                 // per rank, f32: resharded by mean
  std::vector<int64_t> rng;                    // per rank, i64: dropped on resharding

  static constexpr int64_t kSizes[] = {1000, 17, 0, 333};

  void fill(int64_t step, int rank) {
    std::mt19937 gen(static_cast<uint32_t>(step));
    replicated.clear();
    for (int64_t n : kSizes) {
      std::vector<float> v(static_cast<size_t>(n));
      for (float& x : v) x = std::uniform_real_distribution<float>(-1, 1)(gen);
      replicated.push_back(std::move(v));
    }
    counter = {step, step * 7, -step};
    std::mt19937 own(static_cast<uint32_t>(step * 100 + rank));
    residual.assign(50, 0);
    for (float& x : residual) x = std::uniform_real_distribution<float>(-1, 1)(own);
    rng = {static_cast<int64_t>(own()), rank};
  }

  std::vector<StateSource> sources() const {
    std::vector<StateSource> out;
    for (size_t i = 0; i < replicated.size(); ++i) {
      const Shape shape{static_cast<int64_t>(replicated[i].size())};
      out.push_back({{"t" + std::to_string(i), DType::kF32, shape, entry_bytes(DType::kF32, shape)},
                     Sharing::kReplicated,
                     reinterpret_cast<const std::byte*>(replicated[i].data()),
                     true});
    }
    out.push_back({{"counter", DType::kI64, {3}, 24},
                   Sharing::kReplicated,
                   reinterpret_cast<const std::byte*>(counter.data()),
                   false});
    out.push_back({{"residual", DType::kF32, {50}, 200},
                   Sharing::kPerRank,
                   reinterpret_cast<const std::byte*>(residual.data()),
                   false});
    out.push_back({{"rng", DType::kI64, {2}, 16},
                   Sharing::kPerRank,
                   reinterpret_cast<const std::byte*>(rng.data()),
                   false});
    return out;
  }

  // The replicated space as the checkpoint packs it.
  std::vector<std::byte> packed() const {
    std::vector<std::byte> out;
    for (const StateSource& s : sources()) {
      if (s.sharing != Sharing::kReplicated) continue;
      out.insert(out.end(), s.data, s.data + s.info.bytes);
    }
    return out;
  }
};

CheckpointerOptions options_for(const std::string& dir, const std::string& mode) {
  CheckpointerOptions o;
  o.dir = dir;
  o.run_id = "testrun";
  o.chunk_bytes = 64;  // many chunks, uneven shares
  o.async = mode != "sync";
  o.lazy = mode == "lazy";
  o.commit_timeout_seconds = 20;
  return o;
}

// Runs `steps` training-like steps on every rank, saving at each step in `save_steps`.
void train_and_save(const std::string& dir, int world, const std::string& mode,
                    const std::vector<int64_t>& save_steps, int64_t steps, int keep = 2) {
  testing::run_in_process_ranks("local", world, 30000, [&](Communicator& comm) {
    CheckpointerOptions o = options_for(dir, mode);
    o.keep = keep;
    auto made = Checkpointer::create(comm.rank(), world, o);
    ASSERT_TRUE(made.is_ok()) << made.status().to_string();
    Checkpointer& ckpt = *made.value();
    FakeState state;
    for (int64_t step = 1; step <= steps; ++step) {
      ckpt.forward_begins();
      ckpt.backward_begins();
      ckpt.before_update();
      state.fill(step, comm.rank());  // the "optimizer": every byte changes
      if (std::find(save_steps.begin(), save_steps.end(), step) != save_steps.end()) {
        ASSERT_TRUE(ckpt.save(step, state.sources()).is_ok());
      }
    }
    ckpt.wait();
    EXPECT_EQ(ckpt.stats().saves_failed, 0) << ckpt.stats().last_error;
  });
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = frugal::testing::make_temp_dir("frugal-ckpt"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(CheckpointTest, ReshardingMatrixRestoresBitwiseEqualState) {
  for (int saved : {1, 2, 3, 4, 8}) {
    const std::string dir = dir_ + "/n" + std::to_string(saved);
    train_and_save(dir, saved, "lazy", {2}, 2);
    for (int restored : {1, 2, 3, 4, 8}) {
      SCOPED_TRACE("saved on " + std::to_string(saved) + ", restored on " +
                   std::to_string(restored));
      testing::run_in_process_ranks("local", restored, 30000, [&](Communicator& comm) {
        auto result = restore_latest(comm, dir);
        ASSERT_TRUE(result.is_ok()) << result.status().to_string();
        ASSERT_TRUE(result.value().has_value());
        const RestoredState& r = *result.value();
        FakeState expected;
        expected.fill(2, comm.rank());
        EXPECT_EQ(r.manifest.step, 2);
        EXPECT_TRUE(r.replicated == expected.packed());
        if (restored == saved) {
          ASSERT_EQ(r.per_rank.count("residual"), 1u);
          EXPECT_EQ(
              std::memcmp(r.per_rank.at("residual").data.data(), expected.residual.data(), 200), 0);
          EXPECT_EQ(r.per_rank.count("rng"), 1u);
        } else {
          // The mean over the saved ranks, on every new rank; the i64 RNG state is dropped.
          std::vector<double> mean(50, 0.0);
          for (int s = 0; s < saved; ++s) {
            FakeState other;
            other.fill(2, s);
            for (size_t i = 0; i < 50; ++i) mean[i] += other.residual[i];
          }
          ASSERT_EQ(r.per_rank.count("residual"), 1u);
          const float* got = reinterpret_cast<const float*>(r.per_rank.at("residual").data.data());
          for (size_t i = 0; i < 50; ++i) EXPECT_EQ(got[i], static_cast<float>(mean[i] / saved));
          EXPECT_EQ(r.per_rank.count("rng"), 0u);
          EXPECT_FALSE(r.warnings.empty());
        }
      });
    }
  }
}

TEST_F(CheckpointTest, LazySnapshotHoldsTheSavedStepNotLaterUpdates) {
  // Each save's state is overwritten by the next step's "optimizer" right after before_update;
  // the committed bytes must be the saved step's, for every mode.
  for (const std::string mode : {"lazy", "async", "sync"}) {
    const std::string dir = dir_ + "/" + mode;
    train_and_save(dir, 3, mode, {1, 2, 3, 4, 5}, 6, 10);
    for (int64_t step : {3, 5}) {
      // Restore exactly this step by removing newer ones.
      fs::remove_all(dir + "/" + step_dir_name(step + 1));
    }
    testing::run_in_process_ranks("local", 3, 30000, [&](Communicator& comm) {
      auto result = restore_latest(comm, dir);
      ASSERT_TRUE(result.is_ok() && result.value().has_value());
      FakeState expected;
      expected.fill(result.value()->manifest.step, comm.rank());
      EXPECT_TRUE(result.value()->replicated == expected.packed()) << mode;
    });
  }
}

TEST_F(CheckpointTest, KeepsTheNewestCheckpointsAndPointsLatestAtTheLast) {
  train_and_save(dir_, 2, "lazy", {1, 2, 3, 4}, 4, 2);
  auto names = list_directory(dir_);
  ASSERT_TRUE(names.is_ok());
  EXPECT_EQ(names.value(),
            (std::vector<std::string>{"LATEST", step_dir_name(3), step_dir_name(4)}));
  auto latest = read_small_file(dir_ + "/LATEST");
  ASSERT_TRUE(latest.is_ok());
  EXPECT_EQ(latest.value(), step_dir_name(4) + "\n");
}

TEST_F(CheckpointTest, CorruptNewestFallsBackToThePreviousAndLeftoversAreRemoved) {
  train_and_save(dir_, 2, "lazy", {1, 2}, 2);
  // Flip one bit in the middle of the newest checkpoint's rank-1 shard (its data region).
  const std::string shard = dir_ + "/" + step_dir_name(2) + "/" + shard_file_name(1, 2);
  {
    std::fstream f(shard, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(200);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(200);
    f.write(&c, 1);
  }
  fs::create_directories(dir_ + "/" + tmp_step_dir_name(9, "deadrun"));
  testing::run_in_process_ranks("local", 2, 30000, [&](Communicator& comm) {
    auto result = restore_latest(comm, dir_);
    ASSERT_TRUE(result.is_ok() && result.value().has_value());
    EXPECT_EQ(result.value()->manifest.step, 1);
    FakeState expected;
    expected.fill(1, comm.rank());
    EXPECT_TRUE(result.value()->replicated == expected.packed());
    bool named = false;
    for (const auto& w : result.value()->warnings) {
      named = named || w.find(shard_file_name(1, 2)) != std::string::npos;
    }
    EXPECT_TRUE(named) << "the warning names the corrupt shard";
  });
  EXPECT_FALSE(fs::exists(dir_ + "/" + tmp_step_dir_name(9, "deadrun")));
}

TEST_F(CheckpointTest, HungRankMakesTheCommitTimeOutWithoutDeadlock) {
  testing::run_in_process_ranks("local", 2, 30000, [&](Communicator& comm) {
    CheckpointerOptions o = options_for(dir_, "lazy");
    o.commit_timeout_seconds = 0.3;
    o.fault = FaultPlan{FaultPhase::kHang, 1, 1, 1.0};  // rank 1's first save stalls 1 s
    auto made = Checkpointer::create(comm.rank(), 2, o);
    ASSERT_TRUE(made.is_ok());
    Checkpointer& ckpt = *made.value();
    FakeState state;
    for (int64_t step = 1; step <= 2; ++step) {
      ckpt.before_update();
      state.fill(step, comm.rank());
      ASSERT_TRUE(ckpt.save(step, state.sources()).is_ok());
      ckpt.wait();                          // rank 1 is back after its hang; step 2 then commits
      ASSERT_TRUE(comm.barrier().is_ok());  // the lockstep that training's allreduces impose
    }
    if (comm.rank() == 0) {
      EXPECT_EQ(ckpt.stats().saves_failed, 1);
      EXPECT_EQ(ckpt.stats().saves_committed, 1);
      EXPECT_NE(ckpt.stats().last_error.find("did not arrive"), std::string::npos);
    }
  });
  EXPECT_FALSE(fs::exists(dir_ + "/" + step_dir_name(1)));
  EXPECT_TRUE(fs::exists(dir_ + "/" + step_dir_name(2)));
  // The late shard of the abandoned save is a leftover that the next commit removed.
  EXPECT_FALSE(fs::exists(dir_ + "/" + tmp_step_dir_name(1, "testrun")));
}

TEST_F(CheckpointTest, CollectionRemovesSupersededNewerStepsAndKeepsThisSave) {
  // Step 9 is from before a resume at step 4 (a restore skipped it); the old leftover goes too.
  for (const std::string& name :
       {step_dir_name(2), step_dir_name(4), step_dir_name(9), tmp_step_dir_name(3, "crashed")}) {
    fs::create_directories(dir_ + "/" + name);
  }
  const std::optional<FaultPlan> no_fault;
  ASSERT_TRUE(collect_garbage(dir_, 1, 4, &no_fault).is_ok());
  auto names = list_directory(dir_);
  ASSERT_TRUE(names.is_ok());
  EXPECT_EQ(names.value(), std::vector<std::string>{step_dir_name(4)});
}

TEST_F(CheckpointTest, EmptyDirectoryRestoresNothing) {
  testing::run_in_process_ranks("local", 2, 30000, [&](Communicator& comm) {
    auto result = restore_latest(comm, dir_ + "/none");
    ASSERT_TRUE(result.is_ok());
    EXPECT_FALSE(result.value().has_value());
  });
}

}  // namespace
}  // namespace frugal::ckpt
