// Trainer tests: ranks are threads of one process (local backend), each with its own Trainer.
#include "torch/trainer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <mutex>

#include "comm/testing/rank_runner.h"
#include "torch/models.h"

namespace frugal {
namespace {

constexpr int64_t kTimeoutMs = 60'000;

TrainerOptions small_mlp_options() {
  TrainerOptions o;
  o.model = "mlp";
  o.data.dataset = "synthetic";
  o.data.synthetic_train_size = 4096;
  o.data.synthetic_test_size = 1000;
  o.optimizer.name = "sgd";
  o.optimizer.lr = 0.05;
  o.optimizer.momentum = 0.9;
  o.schedule.kind = "constant";
  o.threads = 1;
  o.seed = 7;
  return o;
}

// Copies of every parameter, in the model's order.
std::vector<torch::Tensor> snapshot(Trainer& trainer) {
  std::vector<torch::Tensor> copies;
  for (const auto& p : trainer.model().parameters()) copies.push_back(p.detach().clone());
  return copies;
}

// Rank 0's parameters after each of `steps` steps, on `world` thread ranks with per-worker
// `batch` (and a fusion threshold, to exercise several buckets).
std::vector<std::vector<torch::Tensor>> parameter_trajectory(int world, int64_t batch,
                                                             int64_t steps, size_t fusion_bytes) {
  std::vector<std::vector<torch::Tensor>> trajectory;
  testing::run_in_process_ranks("local", world, kTimeoutMs, [&](Communicator& comm) {
    TrainerOptions o = small_mlp_options();
    o.batch_size = batch;
    o.steps = steps;
    o.fusion_threshold_bytes = fusion_bytes;
    auto trainer = Trainer::create(comm, o);
    ASSERT_TRUE(trainer.is_ok()) << trainer.status().message();
    for (int64_t s = 0; s < steps; ++s) {
      ASSERT_TRUE((*trainer)->train_step().is_ok());
      if (comm.rank() == 0) trajectory.push_back(snapshot(**trainer));
    }
  });
  return trajectory;
}

// The data-parallel property: 4 workers with batch B each follow the same parameters as one
// worker with batch 4B (same seed, hence same initial weights and global sample order).
TEST(TrainerTest, FourWorkersWithBatchBFollowOneWorkerWithBatch4B) {
  constexpr int64_t kSteps = 20;
  const auto single = parameter_trajectory(1, 32, kSteps, size_t{25} << 20);
  const auto data_parallel = parameter_trajectory(4, 8, kSteps, size_t{1} << 20);
  ASSERT_EQ(single.size(), static_cast<size_t>(kSteps));
  ASSERT_EQ(data_parallel.size(), static_cast<size_t>(kSteps));
  double max_difference = 0, max_change = 0;
  for (int64_t s = 0; s < kSteps; ++s) {
    for (size_t p = 0; p < single[s].size(); ++p) {
      ASSERT_TRUE(torch::allclose(data_parallel[s][p], single[s][p], /*rtol=*/1e-4,
                                  /*atol=*/1e-5))
          << "step " << s + 1 << ", parameter " << p << ": max difference "
          << (data_parallel[s][p] - single[s][p]).abs().max().item<double>();
      max_difference =
          std::max(max_difference, (data_parallel[s][p] - single[s][p]).abs().max().item<double>());
    }
  }
  // The tolerance is meaningful only if training moved the weights far more than it.
  for (size_t p = 0; p < single[0].size(); ++p) {
    max_change =
        std::max(max_change, (single[kSteps - 1][p] - single[0][p]).abs().max().item<double>());
  }
  EXPECT_GT(max_change, 100 * std::max(max_difference, 1e-5));
}

// A negative control for the property above: a different global order (another seed) does
// not match, so the comparison can fail.
TEST(TrainerTest, ADifferentSampleOrderGivesDifferentParameters) {
  std::vector<torch::Tensor> a, b;
  for (uint64_t seed_offset : {0, 1}) {
    testing::run_in_process_ranks("local", 1, kTimeoutMs, [&](Communicator& comm) {
      TrainerOptions o = small_mlp_options();
      o.steps = 5;
      o.batch_size = 32;
      auto trainer = Trainer::create(comm, o);
      ASSERT_TRUE(trainer.is_ok());
      // Same initial weights, then a different permutation: reseed the shuffle only.
      if (seed_offset == 1) {
        o.seed += 1;
        auto other = Trainer::create(comm, o);
        ASSERT_TRUE(other.is_ok());
        torch::NoGradGuard no_grad;
        auto from = (*trainer)->model().parameters();
        auto to = (*other)->model().parameters();
        for (size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
        trainer = std::move(other);
      }
      for (int s = 0; s < 5; ++s) ASSERT_TRUE((*trainer)->train_step().is_ok());
      (seed_offset == 0 ? a : b) = snapshot(**trainer);
    });
  }
  ASSERT_EQ(a.size(), b.size());
  EXPECT_FALSE(torch::allclose(a[0], b[0], 1e-4, 1e-5));
}

TEST(TrainerTest, RankZerosInitialParametersReachEveryRank) {
  std::mutex mutex;
  std::vector<std::vector<torch::Tensor>> initial(3);
  testing::run_in_process_ranks("local", 3, kTimeoutMs, [&](Communicator& comm) {
    TrainerOptions o = small_mlp_options();
    o.model = "resnet20";                               // parameters and BatchNorm buffers
    o.seed = 100 + static_cast<uint64_t>(comm.rank());  // each rank would initialize differently
    auto trainer = Trainer::create(comm, o);
    ASSERT_TRUE(trainer.is_ok()) << trainer.status().message();
    std::lock_guard lock(mutex);
    initial[static_cast<size_t>(comm.rank())] = snapshot(**trainer);
  });
  // Rank 0's weights are those of a model built alone with its seed.
  torch::manual_seed(100);
  auto reference = make_model("resnet20", {});
  ASSERT_TRUE(reference.is_ok());
  const auto expected = (*reference)->parameters();
  for (const auto& rank_params : initial) {
    ASSERT_EQ(rank_params.size(), expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      ASSERT_TRUE(torch::equal(rank_params[i], expected[i])) << "parameter " << i;
    }
  }
}

TEST(TrainerTest, ReplicaCheckPassesInTrainingAndNamesADivergedParameter) {
  std::mutex mutex;
  std::vector<std::string> errors(3);
  testing::run_in_process_ranks("local", 3, kTimeoutMs, [&](Communicator& comm) {
    TrainerOptions o = small_mlp_options();
    o.steps = 6;
    o.batch_size = 16;
    o.check_replicas_every = 2;
    o.evaluate = false;
    auto trainer = Trainer::create(comm, o);
    ASSERT_TRUE(trainer.is_ok());
    auto summary = (*trainer)->run();  // checks after steps 2, 4 and 6
    ASSERT_TRUE(summary.is_ok()) << summary.status().message();
    if (comm.rank() == 1) {
      torch::NoGradGuard no_grad;
      (*trainer)->model().named_parameters()["fc2.bias"][5].add_(1.0);
    }
    const Status check = (*trainer)->check_replicas();
    std::lock_guard lock(mutex);
    errors[static_cast<size_t>(comm.rank())] = check.message();
  });
  for (const auto& error : errors) {
    EXPECT_NE(error.find("'fc2.bias' on rank(s) 1 differs from rank 0"), std::string::npos)
        << error;
  }
}

TEST(TrainerTest, ShardedEvaluationEqualsSingleRankEvaluation) {
  EvalResult single;
  std::mutex mutex;
  std::vector<EvalResult> sharded(3);
  for (int world : {1, 3}) {
    testing::run_in_process_ranks("local", world, kTimeoutMs, [&](Communicator& comm) {
      TrainerOptions o = small_mlp_options();
      o.data.synthetic_test_size = 1001;  // uneven shards: 334, 334, 333
      o.eval_batch_size = 100;
      auto trainer = Trainer::create(comm, o);
      ASSERT_TRUE(trainer.is_ok());
      auto result = (*trainer)->evaluate();
      ASSERT_TRUE(result.is_ok()) << result.status().message();
      std::lock_guard lock(mutex);
      if (world == 1) {
        single = *result;
      } else {
        sharded[static_cast<size_t>(comm.rank())] = *result;
      }
    });
  }
  EXPECT_EQ(single.samples, 1001);
  for (const auto& r : sharded) {
    EXPECT_EQ(r.samples, 1001);
    EXPECT_DOUBLE_EQ(r.accuracy, single.accuracy);
    EXPECT_NEAR(r.loss, single.loss, 1e-5 * single.loss);
  }
}

TEST(TrainerTest, LearnsSyntheticImagesAndText) {
  testing::run_in_process_ranks("local", 2, kTimeoutMs, [&](Communicator& comm) {
    TrainerOptions o = small_mlp_options();
    o.epochs = 1;
    o.batch_size = 32;
    auto trainer = Trainer::create(comm, o);
    ASSERT_TRUE(trainer.is_ok());
    EXPECT_EQ((*trainer)->steps_per_epoch(), 4096 / 2 / 32);
    auto summary = (*trainer)->run();
    ASSERT_TRUE(summary.is_ok()) << summary.status().message();
    EXPECT_GT(summary->eval.accuracy, 0.9);  // chance is 0.1
    EXPECT_EQ(summary->steps, 64);
    EXPECT_EQ(summary->samples, 4096);
    EXPECT_GT(summary->dense_bytes_per_step, 4.0 * 5'800'000);

    TrainerOptions lm;
    lm.model = "gpt-tiny";
    lm.data.dataset = "synthetic";
    lm.data.seq_len = 32;
    lm.data.synthetic_train_size = 2048;
    lm.data.synthetic_test_size = 256;
    lm.optimizer.name = "adamw";
    lm.optimizer.lr = 3e-3;
    lm.schedule.warmup_steps = 5;
    lm.steps = 60;
    lm.batch_size = 16;
    lm.threads = 1;
    auto lm_trainer = Trainer::create(comm, lm);
    ASSERT_TRUE(lm_trainer.is_ok()) << lm_trainer.status().message();
    auto before = (*lm_trainer)->evaluate();
    ASSERT_TRUE(before.is_ok());
    auto lm_summary = (*lm_trainer)->run();
    ASSERT_TRUE(lm_summary.is_ok()) << lm_summary.status().message();
    // Uniform guessing over 32 symbols has perplexity 32; the source's is 2^1.5 = 2.83.
    EXPECT_GT(before->perplexity, 16);
    EXPECT_LT(lm_summary->eval.perplexity, 4);
  });
}

TEST(TrainerTest, RejectsBadOptionsNamingTheFlag) {
  testing::run_in_process_ranks("local", 1, kTimeoutMs, [&](Communicator& comm) {
    auto expect_error = [&](TrainerOptions o, const std::string& fragment) {
      auto trainer = Trainer::create(comm, o);
      ASSERT_FALSE(trainer.is_ok());
      EXPECT_NE(trainer.status().message().find(fragment), std::string::npos)
          << trainer.status().message();
    };
    TrainerOptions o = small_mlp_options();
    o.batch_size = 0;
    expect_error(o, "--batch-size");
    o = small_mlp_options();
    o.model = "vgg";
    expect_error(o, "valid: mlp, cnn, resnet20, lstm, gpt-tiny");
    o = small_mlp_options();
    o.optimizer.name = "lamb";
    expect_error(o, "valid: sgd, adam, adamw");
    o = small_mlp_options();
    o.data.dataset = "text";
    expect_error(o, "--dataset text is for language models");
    o = small_mlp_options();
    o.model = "lstm";
    o.data.dataset = "text";
    expect_error(o, "--data PATH");
    o = small_mlp_options();
    o.data.dataset = "fashion-mnist";
    o.data.data_dir = "/nonexistent";
    expect_error(o, "/nonexistent");
  });
}

}  // namespace
}  // namespace frugal
