// The Synchronizer with a compressor: every aggregation kind and fusion planner against the
// serial reference protocol of compress/testing/serial_exchange.h, run on thread-ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "comm/testing/rank_runner.h"
#include "compress/registry.h"
#include "compress/testing/serial_exchange.h"
#include "engine/compressed_exchange.h"
#include "engine/link_probe.h"
#include "engine/synchronizer.h"

namespace frugal {
namespace {

// Thread-ranks of a local group (the shared test runner).
void run_ranks(int world_size, const std::function<void(Communicator&)>& body) {
  testing::run_in_process_ranks("local", world_size, 20000, body);
}

// Deterministic gradient values with a per-tensor scale (so tensors differ in magnitude, as
// layers do).
float grad_value(int rank, int64_t step, int tensor, int64_t i, float scale) {
  uint64_t x = (static_cast<uint64_t>(rank + 1) * 0x9e3779b97f4a7c15ULL) ^
               (static_cast<uint64_t>(step) << 40) ^ (static_cast<uint64_t>(tensor) << 32) ^
               static_cast<uint64_t>(i);
  x ^= x >> 31;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 29;
  return scale * (static_cast<float>(x >> 40) / static_cast<float>(1 << 24) - 0.5f);
}

struct Model {
  std::vector<Shape> shapes;
  std::vector<float> scales;
};

Model small_model() {
  return {{{16, 24}, {24}, {40, 30}, {30}, {7, 5, 3, 3}, {12, 50}, {5}},
          {1.0f, 0.5f, 2.0f, 0.01f, 1.5f, 0.2f, 3.0f}};
}

std::vector<std::vector<float>> grads_of(const Model& model, int rank, int64_t step) {
  std::vector<std::vector<float>> grads;
  for (size_t t = 0; t < model.shapes.size(); ++t) {
    grads.emplace_back(static_cast<size_t>(shape_numel(model.shapes[t])));
    for (size_t i = 0; i < grads.back().size(); ++i) {
      grads.back()[i] =
          grad_value(rank, step, static_cast<int>(t), static_cast<int64_t>(i), model.scales[t]);
    }
  }
  return grads;
}

// Registers the model's tensors as t0, t1, ... (backward order).
void register_model(Synchronizer& sync, const Model& model) {
  for (size_t t = 0; t < model.shapes.size(); ++t) {
    ASSERT_TRUE(sync.register_tensor("t" + std::to_string(t), model.shapes[t]).is_ok());
  }
}

// One step: every gradient handed over in id order, then finish_step.
void sync_step(Synchronizer& sync, const Model& model, std::vector<std::vector<float>>& grads) {
  ASSERT_TRUE(sync.begin_step().is_ok());
  for (size_t t = 0; t < grads.size(); ++t) {
    ASSERT_TRUE(
        sync.grad_ready(static_cast<TensorId>(t), {grads[t].data(), DType::kF32, model.shapes[t]})
            .is_ok());
  }
  Status finished = sync.finish_step();
  ASSERT_TRUE(finished.is_ok()) << finished.to_string();
}

std::unique_ptr<Compressor> make(const std::string& spec, int world) {
  CompressorContext context;
  context.world_size = world;
  context.seed = 5;
  auto made = make_compressor(spec, context);
  EXPECT_TRUE(made.is_ok()) << spec << ": " << made.status().to_string();
  return made.is_ok() ? std::move(made).value() : nullptr;
}

struct Case {
  std::string spec;
  std::string fusion;
  bool exact;  // allgather/two-phase decode in rank order: bitwise equal to the reference
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.spec << " / " << c.fusion; }

class CompressedSyncTest : public ::testing::TestWithParam<Case> {};

// Per-tensor compression (none, safusion, ssfusion with every tensor compressed): whatever the
// bucketing, each rank must end with the serial protocol's average of each tensor, step after
// step (so stateful compressors' residuals evolve identically).
TEST_P(CompressedSyncTest, EqualsSerialReferencePerTensor) {
  const Case& c = GetParam();
  constexpr int kWorld = 3;
  constexpr int kSteps = 4;  // the plan changes before step 2
  const Model model = small_model();
  run_ranks(kWorld, [&](Communicator& comm) {
    const int rank = comm.rank();
    auto compressor = make(c.spec, kWorld);
    ASSERT_NE(compressor, nullptr);
    SynchronizerOptions options;
    options.fusion = parse_fusion(c.fusion).value().kind;
    options.compressor = compressor.get();
    options.dense_below_bytes = 0;  // compress everything: the reference does
    options.profile_warmup_steps = 1;
    options.profile_steps = 1;
    Synchronizer sync(comm, options);
    // The reference: one compressor per rank, driven serially by this thread.
    std::vector<std::unique_ptr<Compressor>> reference;
    std::vector<Compressor*> reference_ptrs;
    for (int r = 0; r < kWorld; ++r) {
      reference.push_back(make(c.spec, kWorld));
      reference_ptrs.push_back(reference.back().get());
    }
    for (size_t t = 0; t < model.shapes.size(); ++t) {
      const std::string name = "t" + std::to_string(t);
      ASSERT_TRUE(sync.register_tensor(name, model.shapes[t]).is_ok());
      for (auto& ref : reference)
        ASSERT_TRUE(ref->register_tensor({name, model.shapes[t]}).is_ok());
    }
    for (int64_t step = 0; step < kSteps; ++step) {
      auto grads = grads_of(model, rank, step);
      ASSERT_TRUE(sync.begin_step().is_ok());
      for (size_t t = 0; t < grads.size(); ++t) {
        Status ready = sync.grad_ready(static_cast<TensorId>(t),
                                       {grads[t].data(), DType::kF32, model.shapes[t]});
        ASSERT_TRUE(ready.is_ok()) << ready.to_string();
      }
      Status finished = sync.finish_step();
      ASSERT_TRUE(finished.is_ok()) << finished.to_string();
      for (size_t t = 0; t < grads.size(); ++t) {
        std::vector<std::vector<float>> all;
        for (int r = 0; r < kWorld; ++r) all.push_back(grads_of(model, r, step)[t]);
        auto expected = testing::serial_exchange(reference_ptrs, static_cast<TensorId>(t), all,
                                                 StepInfo{step, 0});
        ASSERT_TRUE(expected.is_ok()) << expected.status().to_string();
        const std::vector<float>& want = expected->averaged[static_cast<size_t>(rank)];
        for (size_t i = 0; i < want.size(); ++i) {
          if (c.exact) {
            ASSERT_EQ(grads[t][i], want[i])
                << "step " << step << " tensor " << t << " [" << i << "]";
          } else {
            ASSERT_NEAR(grads[t][i], want[i], 1e-5f * (1 + std::abs(want[i])))
                << "step " << step << " tensor " << t << " [" << i << "]";
          }
        }
      }
      const StepStats& stats = sync.last_step_stats();
      EXPECT_EQ(stats.tensors_compressed, static_cast<int>(model.shapes.size()));
      EXPECT_EQ(stats.tensors_missing, 0);  // each tensor compressed alone keeps an element
      EXPECT_GT(stats.compress_us + stats.decompress_us, 0);
    }
    if (options.fusion != FusionKind::kNone) {
      // The profiled plan replaced the per-tensor one after the profile step.
      EXPECT_GT(sync.predicted_step_us(), 0.0);
      EXPECT_GT(sync.link_model().latency_us, 0.0);
    }
  });
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, CompressedSyncTest,
    ::testing::Values(Case{"topk:density=0.05", "none", true},          // gather, variable sizes
                      Case{"ef(topk:density=0.05)", "safusion", true},  // stateful
                      Case{"adtopk:density=0.1", "safusion", true},     // fixed-size allgather
                      Case{"ef(dgc:density=0.05)", "ssfusion", true},
                      Case{"qsgd", "safusion", true},
                      Case{"fp16", "none", false},                 // allreduce of f16 payloads
                      Case{"powersgd:rank=2", "safusion", false},  // two allreduce rounds
                      Case{"onebit", "safusion", true},            // two-phase
                      Case{"ef-signsgd", "none", true}));

// Fused (sparsify-behind) compression: the reference compresses the concatenated buffer.
TEST(CompressedSync, FusedBucketsEqualSerialReferenceOfTheBuffer) {
  constexpr int kWorld = 2;
  const Model model = small_model();
  const std::string spec = "ef(topk:density=0.02)";
  run_ranks(kWorld, [&](Communicator& comm) {
    auto compressor = make(spec, kWorld);
    SynchronizerOptions options;
    options.fusion = FusionKind::kBytes;
    options.fusion_threshold_bytes = 6000;
    options.first_bucket_bytes = 6000;
    options.compressor = compressor.get();
    options.dense_below_bytes = 0;
    Synchronizer sync(comm, options);
    for (size_t t = 0; t < model.shapes.size(); ++t) {
      ASSERT_TRUE(sync.register_tensor("t" + std::to_string(t), model.shapes[t]).is_ok());
    }
    std::vector<std::unique_ptr<Compressor>> reference;
    std::vector<Compressor*> reference_ptrs;
    for (int r = 0; r < kWorld; ++r) {
      reference.push_back(make(spec, kWorld));
      reference_ptrs.push_back(reference.back().get());
    }
    for (int64_t step = 0; step < 3; ++step) {
      auto grads = grads_of(model, comm.rank(), step);
      ASSERT_TRUE(sync.begin_step().is_ok());
      if (step == 0) {
        // Register the same units the engine does: one per bucket, flat, in bucket order.
        for (const Bucket& bucket : sync.buckets()) {
          ASSERT_TRUE(bucket.compress_fused);
          const Shape shape = bucket.tensors.size() == 1
                                  ? model.shapes[static_cast<size_t>(bucket.tensors[0].id)]
                                  : Shape{static_cast<int64_t>(bucket.bytes / 4)};
          for (auto& ref : reference) {
            ASSERT_TRUE(ref->register_tensor({"b" + std::to_string(bucket.index), shape}).is_ok());
          }
        }
        ASSERT_GT(sync.buckets().size(), 1u);
        ASSERT_LT(sync.buckets().size(), model.shapes.size());
      }
      for (size_t t = grads.size(); t-- > 0;) {  // reverse order: buckets fill out of order
        ASSERT_TRUE(sync.grad_ready(static_cast<TensorId>(t),
                                    {grads[t].data(), DType::kF32, model.shapes[t]})
                        .is_ok());
      }
      Status finished = sync.finish_step();
      ASSERT_TRUE(finished.is_ok()) << finished.to_string();
      for (const Bucket& bucket : sync.buckets()) {
        std::vector<std::vector<float>> fused(kWorld);
        for (int r = 0; r < kWorld; ++r) {
          const auto rank_grads = grads_of(model, r, step);
          for (const TensorSlot& slot : bucket.tensors) {
            const auto& g = rank_grads[static_cast<size_t>(slot.id)];
            fused[static_cast<size_t>(r)].insert(fused[static_cast<size_t>(r)].end(), g.begin(),
                                                 g.end());
          }
        }
        auto expected =
            testing::serial_exchange(reference_ptrs, bucket.index, fused, StepInfo{step, 0});
        ASSERT_TRUE(expected.is_ok()) << expected.status().to_string();
        size_t at = 0;
        for (const TensorSlot& slot : bucket.tensors) {
          for (float v : grads[static_cast<size_t>(slot.id)]) {
            ASSERT_EQ(v, expected->averaged[static_cast<size_t>(comm.rank())][at++]);
          }
        }
      }
    }
  });
}

// Sparsify-behind drops small-magnitude tensors entirely ("tensor missing"); sparsify-ahead
// never does. Tensor 3 has 1/100 of the others' scale.
TEST(CompressedSync, TensorMissingIsCountedForFusedAndZeroPerTensor) {
  const Model model = small_model();
  for (const char* fusion : {"bytes:1", "none"}) {
    run_ranks(2, [&](Communicator& comm) {
      auto compressor = make("topk:density=0.01", 2);
      SynchronizerOptions options;
      const FusionSpec spec = parse_fusion(fusion).value();
      options.fusion = spec.kind;
      options.fusion_threshold_bytes = spec.bytes;
      options.first_bucket_bytes = spec.bytes;
      options.compressor = compressor.get();
      Synchronizer sync(comm, options);
      register_model(sync, model);
      auto grads = grads_of(model, comm.rank(), 0);
      sync_step(sync, model, grads);
      const StepStats& stats = sync.last_step_stats();
      EXPECT_EQ(stats.tensors_compressed, static_cast<int>(model.shapes.size()));
      if (spec.kind == FusionKind::kNone) {
        EXPECT_EQ(stats.tensors_missing, 0);
      } else {
        EXPECT_EQ(sync.buckets().size(), 1u);
        EXPECT_GE(stats.tensors_missing, 2);  // at least the tiny t3 and t1
        EXPECT_LT(stats.tensors_missing, static_cast<int>(model.shapes.size()));
      }
    });
  }
}

// Hybrid dispatch: tensors under the cut-off are averaged exactly (dense allreduce), the others
// go through the compressor; bytes on the wire add up to the two collectives' cost models.
TEST(CompressedSync, DenseBelowCutOffIsExactAndWireBytesAddUp) {
  constexpr int kWorld = 4;
  const Model model = small_model();
  run_ranks(kWorld, [&](Communicator& comm) {
    auto compressor = make("adtopk:density=0.1", kWorld);
    SynchronizerOptions options;
    options.fusion = FusionKind::kNone;
    options.compressor = compressor.get();
    options.dense_below_bytes = 1000;  // the 1-D tensors (24, 30, 5 floats) go dense
    Synchronizer sync(comm, options);
    register_model(sync, model);
    auto grads = grads_of(model, comm.rank(), 0);
    sync_step(sync, model, grads);
    int64_t dense_bytes = 0, wire = 0;
    for (size_t t = 0; t < model.shapes.size(); ++t) {
      const int64_t bytes = shape_numel(model.shapes[t]) * 4;
      dense_bytes += bytes;
      if (bytes < 1000) {
        wire += 2 * (kWorld - 1) * bytes / kWorld;
        for (size_t i = 0; i < grads[t].size(); ++i) {
          float sum = 0;
          for (int r = 0; r < kWorld; ++r) sum += grads_of(model, r, 0)[t][i];
          ASSERT_NEAR(grads[t][i], sum / kWorld, 1e-6f) << "tensor " << t;
        }
      }
    }
    const StepStats& stats = sync.last_step_stats();
    EXPECT_EQ(stats.tensors_compressed, 4);
    EXPECT_EQ(stats.dense_bytes, dense_bytes);
    EXPECT_EQ(stats.dense_wire_bytes, 2 * (kWorld - 1) * dense_bytes / kWorld);
    // Fixed-size payloads: a plain allgather, each rank receiving (and forwarding) n-1 blocks.
    int64_t gathered = 0;
    for (TensorId unit = 0; unit < compressor->num_tensors(); ++unit) {
      gathered += (kWorld - 1) * static_cast<int64_t>(compressor->max_compressed_bytes(unit));
    }
    EXPECT_EQ(stats.bytes_sent, wire + gathered);
    EXPECT_LT(stats.bytes_sent, stats.dense_wire_bytes / 2);
  });
}

// Dense tensors riding in the gather: the payloads decode exactly as without them, the dense
// values become the sum over ranks in rank order divided by the divisor, and the bytes grow by
// (n-1) copies of them.
TEST(CompressedSync, DenseValuesRidingTheGatherAreAveragedInRankOrder) {
  constexpr int kWorld = 3;
  const Model model = small_model();
  for (const char* spec : {"topk:density=0.05", "adtopk:density=0.1"}) {  // variable, fixed
    run_ranks(kWorld, [&](Communicator& comm) {
      const int rank = comm.rank();
      auto compressor = make(spec, kWorld);
      const auto grads = grads_of(model, rank, 0);
      std::vector<std::vector<std::byte>> payloads;
      for (size_t t = 0; t < 3; ++t) {  // t0 and t2 compressed; t1 and t3 ride dense
        const TensorId id =
            compressor->register_tensor({"t" + std::to_string(t), model.shapes[t]}).value();
        payloads.emplace_back(compressor->max_compressed_bytes(id));
        if (t == 1) continue;
        auto used = compressor->compress(id, {grads[t].data(), DType::kF32, model.shapes[t]},
                                         payloads.back(), StepInfo{0, 0});
        ASSERT_TRUE(used.is_ok()) << used.status().to_string();
        payloads.back().resize(*used);
      }
      // One pass with the dense values riding, one with them left out: the same decoded sums.
      std::vector<std::vector<float>> targets(2);
      ExchangeCounters with, without;
      std::vector<float> dense = grads[1];
      dense.insert(dense.end(), grads[3].begin(), grads[3].end());
      for (int riding = 0; riding < 2; ++riding) {
        std::vector<float> out(grads[0].size() + grads[2].size());
        std::vector<CompressedUnit> units = {
            {0, payloads[0], MutableView{out.data(), DType::kF32, model.shapes[0]}},
            {2, payloads[2],
             MutableView{out.data() + grads[0].size(), DType::kF32, model.shapes[2]}}};
        CompressedExchange exchange(comm, *compressor);
        const MutableView ride =
            riding == 1 ? flat_view(dense.data(), DType::kF32, static_cast<int64_t>(dense.size()))
                        : MutableView{};
        ASSERT_TRUE(exchange
                        .exchange(units, StepInfo{0, 0}, riding == 1 ? with : without,
                                  static_cast<float>(kWorld), ride)
                        .is_ok());
        targets[static_cast<size_t>(riding)] = out;
      }
      EXPECT_EQ(targets[0], targets[1]);
      std::vector<float> expected(dense.size(), 0.0f);
      for (int r = 0; r < kWorld; ++r) {
        const auto other = grads_of(model, r, 0);
        for (size_t i = 0; i < grads[1].size(); ++i) expected[i] += other[1][i];
        for (size_t i = 0; i < grads[3].size(); ++i) expected[grads[1].size() + i] += other[3][i];
      }
      for (float& e : expected) e /= static_cast<float>(kWorld);
      EXPECT_EQ(dense, expected);
      EXPECT_EQ(with.bytes_sent - without.bytes_sent,
                static_cast<int64_t>((kWorld - 1) * dense.size() * sizeof(float)));
    });
  }
}

TEST(CompressedSync, CompressorRejectingATensorFailsBeginStepWithItsName) {
  run_ranks(1, [&](Communicator& comm) {
    auto compressor = make("powersgd:rank=2", 1);
    ASSERT_NE(compressor, nullptr);
    ASSERT_TRUE(compressor->register_tensor({"taken", {4, 4}}).is_ok());
    SynchronizerOptions options;
    options.compressor = compressor.get();
    Synchronizer sync(comm, options);
    ASSERT_TRUE(sync.register_tensor("taken", {4, 4}).is_ok());
    Status status = sync.begin_step();
    ASSERT_FALSE(status.is_ok());
    EXPECT_NE(status.message().find("'taken'"), std::string::npos) << status.message();
  });
}

}  // namespace
}  // namespace frugal

namespace frugal {
namespace {

TEST(ProbeLink, EveryRankGetsTheSamePositiveModel) {
  constexpr int kWorld = 3;
  std::vector<LinkModel> models(kWorld);
  run_ranks(kWorld, [&](Communicator& comm) {
    auto model = probe_link(comm);
    ASSERT_TRUE(model.is_ok()) << model.status().to_string();
    models[static_cast<size_t>(comm.rank())] = *model;
  });
  for (const LinkModel& m : models) {
    EXPECT_GE(m.latency_us, 0.0);
    EXPECT_GT(m.allreduce_us_per_byte, 0.0);  // a bigger buffer never comes for free
    EXPECT_GT(m.allgather_us_per_byte, 0.0);
    EXPECT_EQ(m.latency_us, models[0].latency_us);
    EXPECT_EQ(m.allreduce_us_per_byte, models[0].allreduce_us_per_byte);
  }
}

}  // namespace
}  // namespace frugal
