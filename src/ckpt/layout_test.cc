#include "ckpt/layout.h"

#include <gtest/gtest.h>

#include <limits>

namespace frugal::ckpt {
namespace {

int64_t chunks_in(ByteRange range, int64_t align) {
  return range.size() / align + (range.size() % align != 0);
}

// The properties partition promises, checked for one (total, world, align).
void expect_partition_properties(int64_t total, int world, int64_t align) {
  SCOPED_TRACE("total=" + std::to_string(total) + " world=" + std::to_string(world) +
               " align=" + std::to_string(align));
  const int64_t chunks = total / align + (total % align != 0);
  int64_t previous_hi = 0;
  int64_t previous_chunks = std::numeric_limits<int64_t>::max();
  for (int rank = 0; rank < world; ++rank) {
    const ByteRange share = partition(total, rank, world, align);
    // Tiles [0, total) in rank order.
    ASSERT_EQ(share.lo, previous_hi);
    ASSERT_LE(share.lo, share.hi);
    previous_hi = share.hi;
    // Boundaries are whole chunks, except the end of the space.
    if (share.hi != total) {
      ASSERT_EQ(share.hi % align, 0);
    }
    // Balanced: every share has floor or ceil of chunks / world chunks, larger ones first, so
    // that with fewer chunks than ranks the empty shares are the trailing ones.
    const int64_t mine = chunks_in(share, align);
    ASSERT_GE(mine, chunks / world);
    ASSERT_LE(mine, chunks / world + 1);
    ASSERT_LE(mine, previous_chunks);
    previous_chunks = mine;
    if (rank >= chunks) {
      ASSERT_TRUE(share.empty());
    }
  }
  ASSERT_EQ(previous_hi, total);
}

TEST(Partition, TilesInOrderForManySizes) {
  for (int64_t total : {0, 1, 2, 7, 255, 256, 257, 1000, 4096, 65537, (1 << 20) + 3}) {
    for (int world : {1, 2, 3, 4, 7, 8, 16, 100, 1000}) {
      for (int64_t align : {1, 2, 8, 256, 4096, 1 << 20}) {
        expect_partition_properties(total, world, align);
      }
    }
  }
}

TEST(Partition, HugeSpacesDoNotOverflow) {
  const int64_t max = std::numeric_limits<int64_t>::max();
  expect_partition_properties(max, 7, 1);
  expect_partition_properties(max, 1000, 4 << 20);
  expect_partition_properties(max - 1, 3, max / 2);
}

TEST(Partition, ClosedFormExamples) {
  // 1000 bytes in 256-byte chunks is 4 chunks: 2 + 1 + 1 over three ranks.
  EXPECT_EQ(partition(1000, 0, 3, 256), (ByteRange{0, 512}));
  EXPECT_EQ(partition(1000, 1, 3, 256), (ByteRange{512, 768}));
  EXPECT_EQ(partition(1000, 2, 3, 256), (ByteRange{768, 1000}));
  // One short chunk, four ranks: rank 0 takes it, the rest are empty at the end.
  EXPECT_EQ(partition(10, 0, 4, 256), (ByteRange{0, 10}));
  EXPECT_EQ(partition(10, 3, 4, 256), (ByteRange{10, 10}));
  EXPECT_EQ(partition(0, 0, 1, 256), (ByteRange{0, 0}));
}

TEST(Intersect, OverlapOrEmpty) {
  EXPECT_EQ(intersect({0, 10}, {5, 20}), (ByteRange{5, 10}));
  EXPECT_EQ(intersect({5, 20}, {0, 10}), (ByteRange{5, 10}));
  EXPECT_EQ(intersect({0, 10}, {2, 3}), (ByteRange{2, 3}));
  EXPECT_TRUE(intersect({0, 10}, {10, 20}).empty());
  EXPECT_TRUE(intersect({0, 10}, {30, 40}).empty());
  EXPECT_TRUE(intersect({5, 5}, {0, 10}).empty());
}

TEST(Pack, OffsetsAreRunningSums) {
  std::vector<EntryInfo> entries = {
      {"a", DType::kF32, {2, 3}, 24}, {"b", DType::kU8, {0}, 0}, {"c", DType::kF64, {5}, 40}};
  const PackedLayout layout = pack(entries);
  EXPECT_EQ(layout.offsets, (std::vector<int64_t>{0, 24, 24}));
  EXPECT_EQ(layout.total, 64);
  ASSERT_EQ(layout.entries.size(), 3u);
  EXPECT_EQ(layout.entries[2].name, "c");
  EXPECT_EQ(pack({}).total, 0);
}

TEST(EntryBytes, DtypeTimesElementsWithOverflowAndNegativeChecks) {
  EXPECT_EQ(entry_bytes(DType::kF32, {2048, 784}), 2048 * 784 * 4);
  EXPECT_EQ(entry_bytes(DType::kBF16, {}), 2);  // a scalar
  EXPECT_EQ(entry_bytes(DType::kI64, {3, 0, 5}), 0);
  EXPECT_EQ(entry_bytes(DType::kF32, {-1, 4}), -1);
  EXPECT_EQ(entry_bytes(DType::kF64, {int64_t{1} << 40, int64_t{1} << 30}), -1);
}

}  // namespace
}  // namespace frugal::ckpt
