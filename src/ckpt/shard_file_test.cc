#include "ckpt/shard_file.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cstring>
#include <random>

#include "ckpt/files_test_util.h"

namespace frugal::ckpt {
namespace {

using testing::read_file;
using testing::TempDir;
using testing::write_file;

std::string random_bytes(std::mt19937_64& rng, size_t count) {
  std::string bytes(count, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  return bytes;
}

ConstBytes bytes_of(const std::string& text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

template <typename T>
T load(const std::string& bytes, size_t offset) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// What one shard holds: its header, its data, and the footer's description of the data.
struct ShardSpec {
  ShardHeader header;
  std::string data;
  ShardContents contents;
};

// A replicated share of `replicated_bytes` random bytes followed by per-rank records (one
// empty, one scalar), as a trainer would write them.
ShardSpec make_spec(std::mt19937_64& rng, int64_t replicated_bytes, int64_t chunk_bytes) {
  ShardSpec spec;
  spec.header = {"run-2024-abc", 120, 1, 4, chunk_bytes};
  spec.contents.replicated = {1000, 1000 + replicated_bytes};
  int64_t offset = replicated_bytes;
  for (EntryInfo info :
       {EntryInfo{"ef/fc1.weight", DType::kF32, {3, 5}, 60},
        EntryInfo{"rng/state", DType::kU8, {16}, 16}, EntryInfo{"ef/empty", DType::kF16, {0, 7}, 0},
        EntryInfo{"step_count", DType::kI64, {}, 8}}) {
    spec.contents.records.push_back({info, offset});
    offset += info.bytes;
  }
  spec.data = random_bytes(rng, static_cast<size_t>(offset));
  return spec;
}

// Appends the data in random pieces (empty ones included) so every buffering path runs.
Result<ShardInfo> write_spec(const std::string& path, const ShardSpec& spec, std::mt19937_64& rng) {
  FRUGAL_ASSIGN_OR_RETURN(auto writer, ShardWriter::create(path, spec.header));
  const ConstBytes data = bytes_of(spec.data);
  size_t done = 0;
  while (done < data.size()) {
    const size_t piece = std::min<size_t>(
        rng() % static_cast<size_t>(3 * spec.header.chunk_bytes + 1), data.size() - done);
    FRUGAL_RETURN_IF_ERROR(writer->append(data.subspan(done, piece)));
    done += piece;
    EXPECT_EQ(writer->data_bytes(), static_cast<int64_t>(done));
  }
  return writer->finish(spec.contents);
}

void expect_same_info(const ShardInfo& a, const ShardInfo& b) {
  EXPECT_EQ(a.header.run_id, b.header.run_id);
  EXPECT_EQ(a.header.step, b.header.step);
  EXPECT_EQ(a.header.rank, b.header.rank);
  EXPECT_EQ(a.header.world_size, b.header.world_size);
  EXPECT_EQ(a.header.chunk_bytes, b.header.chunk_bytes);
  EXPECT_EQ(a.contents.replicated, b.contents.replicated);
  ASSERT_EQ(a.contents.records.size(), b.contents.records.size());
  for (size_t i = 0; i < a.contents.records.size(); ++i) {
    const ShardRecord& x = a.contents.records[i];
    const ShardRecord& y = b.contents.records[i];
    EXPECT_EQ(x.info.name, y.info.name);
    EXPECT_EQ(x.info.dtype, y.info.dtype);
    EXPECT_EQ(x.info.shape, y.info.shape);
    EXPECT_EQ(x.info.bytes, y.info.bytes);
    EXPECT_EQ(x.data_offset, y.data_offset);
  }
  EXPECT_EQ(a.data_bytes, b.data_bytes);
  EXPECT_EQ(a.chunk_hashes, b.chunk_hashes);
  EXPECT_EQ(a.file_bytes, b.file_bytes);
  EXPECT_EQ(a.footer_hash, b.footer_hash);
}

// read_shard_info, then verify_all: the full check of a shard file.
Status check_shard(const std::string& path) {
  FRUGAL_ASSIGN_OR_RETURN(ShardInfo info, read_shard_info(path));
  FRUGAL_ASSIGN_OR_RETURN(auto reader, ShardReader::open(path, std::move(info)));
  return reader->verify_all();
}

TEST(ShardFile, RoundTripsRandomDataAndRecords) {
  TempDir dir;
  std::mt19937_64 rng(20240501);
  for (int64_t replicated : {0, 1, 255, 256, 257, 3000, 10000}) {
    for (int64_t chunk : {1, 64, 256, 4096}) {
      SCOPED_TRACE("replicated=" + std::to_string(replicated) + " chunk=" + std::to_string(chunk));
      const ShardSpec spec = make_spec(rng, replicated, chunk);
      const std::string path = dir / "shard.bin";
      Result<ShardInfo> written = write_spec(path, spec, rng);
      ASSERT_TRUE(written.is_ok()) << written.status().to_string();
      Result<ShardInfo> read = read_shard_info(path);
      ASSERT_TRUE(read.is_ok()) << read.status().to_string();
      expect_same_info(written.value(), read.value());
      // Against independent references: the file's size and each chunk's XXH3.
      const std::string file = read_file(path);
      EXPECT_EQ(read->file_bytes, static_cast<int64_t>(file.size()));
      EXPECT_EQ(read->data_bytes, static_cast<int64_t>(spec.data.size()));
      ASSERT_EQ(read->chunk_hashes.size(), (spec.data.size() + chunk - 1) / chunk);
      for (size_t k = 0; k < read->chunk_hashes.size(); ++k) {
        const std::string_view piece = std::string_view(spec.data).substr(k * chunk, chunk);
        EXPECT_EQ(read->chunk_hashes[k], XXH3_64bits(piece.data(), piece.size()));
      }

      auto reader = ShardReader::open(path, read.value());
      ASSERT_TRUE(reader.is_ok()) << reader.status().to_string();
      ASSERT_TRUE(reader.value()->verify_all().is_ok());
      for (int trial = 0; trial < 50; ++trial) {
        const size_t lo = rng() % (spec.data.size() + 1);
        const size_t size = rng() % (spec.data.size() - lo + 1);
        std::string out(size, '\0');
        ASSERT_TRUE(reader.value()
                        ->read(static_cast<int64_t>(lo),
                               {reinterpret_cast<std::byte*>(out.data()), out.size()})
                        .is_ok());
        ASSERT_EQ(out, spec.data.substr(lo, size));
      }
      for (const ShardRecord& record : spec.contents.records) {
        std::string out(static_cast<size_t>(record.info.bytes), '\0');
        ASSERT_TRUE(
            reader.value()
                ->read(record.data_offset, {reinterpret_cast<std::byte*>(out.data()), out.size()})
                .is_ok());
        EXPECT_EQ(out, spec.data.substr(record.data_offset, out.size()));
      }
    }
  }
}

TEST(ShardFile, FollowsTheDocumentedLayout) {
  TempDir dir;
  std::mt19937_64 rng(7);
  const ShardSpec spec = make_spec(rng, 700, 256);
  const std::string path = dir / "shard.bin";
  Result<ShardInfo> written = write_spec(path, spec, rng);
  ASSERT_TRUE(written.is_ok()) << written.status().to_string();
  const std::string file = read_file(path);

  EXPECT_EQ(file.substr(0, 8), "FRUGALCK");
  EXPECT_EQ(load<uint32_t>(file, 8), kShardFormatVersion);
  EXPECT_EQ(load<uint32_t>(file, 12), 128u);
  EXPECT_EQ(file.substr(16, 32), std::string("run-2024-abc") + std::string(20, '\0'));
  EXPECT_EQ(load<int64_t>(file, 48), 120);
  EXPECT_EQ(load<int32_t>(file, 56), 1);
  EXPECT_EQ(load<int32_t>(file, 60), 4);
  EXPECT_EQ(load<int64_t>(file, 64), 256);
  EXPECT_EQ(file.substr(72, 48), std::string(48, '\0'));
  EXPECT_EQ(load<uint64_t>(file, 120), XXH3_64bits(file.data(), 120));
  EXPECT_EQ(file.substr(128, spec.data.size()), spec.data);

  EXPECT_EQ(file.substr(file.size() - 8), "FRUGALND");
  const uint64_t footer_bytes = load<uint64_t>(file, file.size() - 24);
  const size_t footer_offset = 128 + spec.data.size();
  EXPECT_EQ(footer_offset + footer_bytes + 24, file.size());
  EXPECT_EQ(load<uint64_t>(file, file.size() - 16),
            XXH3_64bits(file.data() + footer_offset, footer_bytes));
  EXPECT_EQ(load<uint64_t>(file, file.size() - 16), written->footer_hash);
  // Footer: data bytes, replicated range, record count, first record's name.
  EXPECT_EQ(load<uint64_t>(file, footer_offset), spec.data.size());
  EXPECT_EQ(load<int64_t>(file, footer_offset + 8), 1000);
  EXPECT_EQ(load<int64_t>(file, footer_offset + 16), 1700);
  EXPECT_EQ(load<uint32_t>(file, footer_offset + 24), 4u);
  EXPECT_EQ(load<uint16_t>(file, footer_offset + 28), 13u);
  EXPECT_EQ(file.substr(footer_offset + 30, 13), "ef/fc1.weight");
  // The footer ends with the chunk count and the hashes.
  const size_t chunks = (spec.data.size() + 255) / 256;
  EXPECT_EQ(load<uint64_t>(file, footer_offset + footer_bytes - 8 * chunks - 8), chunks);
}

// A small shard (about 3 KiB, 256-byte chunks) for the corruption tests.
struct SmallShard {
  TempDir dir;
  std::string path = dir / "shard-00001-of-00004.bin";
  std::string bytes;
  int64_t data_bytes = 0;

  SmallShard() {
    std::mt19937_64 rng(99);
    const ShardSpec spec = make_spec(rng, 2600, 256);
    data_bytes = static_cast<int64_t>(spec.data.size());
    Result<ShardInfo> info = write_spec(path, spec, rng);
    EXPECT_TRUE(info.is_ok()) << info.status().to_string();
    bytes = read_file(path);
  }
};

TEST(ShardFile, EveryTruncationIsDetected) {
  SmallShard shard;
  const int64_t size = static_cast<int64_t>(shard.bytes.size());
  for (int64_t length = 0; length < size; ++length) {
    write_file(shard.path, shard.bytes.substr(0, static_cast<size_t>(length)));
    Result<ShardInfo> info = read_shard_info(shard.path);
    ASSERT_FALSE(info.is_ok()) << "truncated to " << length << " of " << size << " bytes";
    ASSERT_EQ(info.status().code(), StatusCode::kDataLoss) << info.status().to_string();
    ASSERT_NE(info.status().message().find(shard.path), std::string::npos);
  }
}

TEST(ShardFile, TruncationMessagesNameTheFileAndOffset) {
  SmallShard shard;
  const size_t size = shard.bytes.size();
  const size_t footer_offset = 128 + static_cast<size_t>(shard.data_bytes);
  auto message_at = [&](size_t length) {
    write_file(shard.path, shard.bytes.substr(0, length));
    return read_shard_info(shard.path).status().message();
  };
  EXPECT_EQ(message_at(0), shard.path + ": truncated: 0 bytes, shorter than the 128-byte header");
  EXPECT_EQ(message_at(100),
            shard.path + ": truncated: 100 bytes, shorter than the 128-byte header");
  EXPECT_EQ(message_at(140), shard.path + ": truncated: the file ends before the 24-byte " +
                                 "trailer at byte offset 140");
  for (size_t length : {size_t{1000}, footer_offset + 10, size - 10, size - 1}) {
    EXPECT_EQ(message_at(length), shard.path + ": no \"FRUGALND\" trailer magic (a torn or " +
                                      "truncated write) at byte offset " +
                                      std::to_string(length - 8));
  }
}

TEST(ShardFile, EverySingleBitFlipIsDetected) {
  SmallShard shard;
  ASSERT_GT(shard.bytes.size(), 2800u);
  std::mt19937_64 rng(12345);
  const size_t data_end = 128 + static_cast<size_t>(shard.data_bytes);
  int header_hits = 0, data_hits = 0, footer_hits = 0, trailer_hits = 0;
  for (int trial = 0; trial < 10000; ++trial) {
    const size_t bit = rng() % (shard.bytes.size() * 8);
    std::string corrupted = shard.bytes;
    corrupted[bit / 8] = static_cast<char>(corrupted[bit / 8] ^ (1 << (bit % 8)));
    write_file(shard.path, corrupted);
    const Status status = check_shard(shard.path);
    ASSERT_FALSE(status.is_ok()) << "flip of bit " << bit % 8 << " at byte " << bit / 8;
    ASSERT_EQ(status.code(), StatusCode::kDataLoss) << status.to_string();
    const size_t byte = bit / 8;
    (byte < 128                                       ? header_hits
     : byte < data_end                                ? data_hits
     : byte < shard.bytes.size() - kShardTrailerBytes ? footer_hits
                                                      : trailer_hits)++;
  }
  // Every region was exercised.
  EXPECT_GT(header_hits, 0);
  EXPECT_GT(data_hits, 0);
  EXPECT_GT(footer_hits, 0);
  EXPECT_GT(trailer_hits, 0);
}

TEST(ShardFile, ChunkMismatchNamesTheChunkOffset) {
  SmallShard shard;
  std::string corrupted = shard.bytes;
  corrupted[128 + 700] ^= 0x10;  // data byte 700 is in chunk 2, at file offset 128 + 512
  write_file(shard.path, corrupted);
  Result<ShardInfo> info = read_shard_info(shard.path);
  ASSERT_TRUE(info.is_ok()) << "the data is not read by read_shard_info";
  auto reader = ShardReader::open(shard.path, info.value());
  ASSERT_TRUE(reader.is_ok());
  const std::string expected = shard.path + ": data chunk 2 of " +
                               std::to_string(info->chunk_hashes.size()) +
                               " does not match its hash at byte offset 640";
  EXPECT_EQ(reader.value()->verify_all().message(), expected);
  // A read that touches chunk 2 fails the same way; one that avoids it succeeds.
  std::vector<std::byte> out(100);
  EXPECT_EQ(reader.value()->read(450, out).message(), expected);
  EXPECT_TRUE(reader.value()->read(0, out).is_ok());
  EXPECT_TRUE(reader.value()->read(768, out).is_ok());
}

TEST(ShardFile, ReadsOutsideTheDataRegionAreOutOfRange) {
  SmallShard shard;
  Result<ShardInfo> info = read_shard_info(shard.path);
  ASSERT_TRUE(info.is_ok());
  auto reader = ShardReader::open(shard.path, info.value());
  ASSERT_TRUE(reader.is_ok());
  std::vector<std::byte> out(10);
  EXPECT_EQ(reader.value()->read(-1, out).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(reader.value()->read(shard.data_bytes - 9, out).code(), StatusCode::kOutOfRange);
  EXPECT_EQ(reader.value()->read(std::numeric_limits<int64_t>::max(), out).code(),
            StatusCode::kOutOfRange);
  EXPECT_TRUE(reader.value()->read(shard.data_bytes - 10, out).is_ok());
  EXPECT_TRUE(reader.value()->read(shard.data_bytes, {}).is_ok());
}

TEST(ShardFile, WriterRejectsBadHeadersAndContents) {
  TempDir dir;
  const std::string path = dir / "shard.bin";
  for (const ShardHeader& bad :
       {ShardHeader{"", 1, 0, 1, 256}, ShardHeader{"has space", 1, 0, 1, 256},
        ShardHeader{std::string(33, 'x'), 1, 0, 1, 256}, ShardHeader{"run", -1, 0, 1, 256},
        ShardHeader{"run", 1, 2, 2, 256}, ShardHeader{"run", 1, 0, 0, 256},
        ShardHeader{"run", 1, 0, 1, 0}}) {
    EXPECT_EQ(ShardWriter::create(path, bad).status().code(), StatusCode::kInvalidArgument)
        << bad.run_id;
  }

  std::mt19937_64 rng(3);
  auto finish_with = [&](ShardContents contents) {
    auto writer = ShardWriter::create(path, {"run", 1, 0, 1, 64});
    EXPECT_TRUE(writer.is_ok());
    const std::string data = random_bytes(rng, 200);
    EXPECT_TRUE(writer.value()->append(bytes_of(data)).is_ok());
    return writer.value()->finish(contents).status();
  };
  EXPECT_TRUE(finish_with({{0, 100}, {{{"a", DType::kF32, {25}, 100}, 100}}}).is_ok());
  // A record overlapping the replicated share, running past the data, or with a wrong size.
  EXPECT_EQ(finish_with({{0, 100}, {{{"a", DType::kF32, {25}, 100}, 50}}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(finish_with({{0, 100}, {{{"a", DType::kF32, {26}, 104}, 100}}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(finish_with({{0, 100}, {{{"a", DType::kF32, {25}, 99}, 100}}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(finish_with({{0, 300}, {}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(finish_with({{0, 100},
                         {{{"a", DType::kU8, {50}, 50}, 100}, {{"b", DType::kU8, {50}, 50}, 120}}})
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(ShardFile, WriterRefusesUseAfterFinish) {
  TempDir dir;
  auto writer = ShardWriter::create(dir / "shard.bin", {"run", 1, 0, 1, 64});
  ASSERT_TRUE(writer.is_ok());
  ASSERT_TRUE(writer.value()->finish({}).is_ok());
  EXPECT_EQ(writer.value()->append({}).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(writer.value()->finish({}).status().code(), StatusCode::kFailedPrecondition);
  // An empty shard is valid.
  EXPECT_TRUE(check_shard(dir / "shard.bin").is_ok());
}

TEST(ShardFile, MissingFileIsNotFoundNamingThePath) {
  TempDir dir;
  const Status status = read_shard_info(dir / "nope.bin").status();
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_NE(status.message().find(dir / "nope.bin"), std::string::npos) << status.message();
}

TEST(ShardFile, OtherFilesAreRejectedByMagic) {
  TempDir dir;
  write_file(dir / "x.bin", std::string(4096, 'x'));
  EXPECT_EQ(read_shard_info(dir / "x.bin").status().message(),
            dir / "x.bin" + ": not a Frugal shard file (no \"FRUGALCK\" magic) at byte offset 0");
}

}  // namespace
}  // namespace frugal::ckpt
