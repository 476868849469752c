// The shard file one rank writes per checkpoint. Binary, little-endian, self-verifying:
//
//   header   128 bytes: magic "FRUGALCK", u32 version, u32 header size, run id (32 bytes, ASCII,
//            NUL-padded), i64 step, i32 rank, i32 world size, i64 chunk bytes, zero padding,
//            and at bytes [120, 128) the XXH3-64 of bytes [0, 120).
//   data     the rank's replicated share, then its per-rank records, back to back. Hashed in
//            chunks of `chunk bytes` (the last chunk may be shorter): chunk k covers data bytes
//            [k*chunk, min((k+1)*chunk, data bytes)).
//   footer   u64 data bytes, i64 replicated lo, i64 replicated hi, u32 record count, records
//            {u16 name length, name, u8 dtype, u8 rank (ndim), i64 dims[ndim], i64 data offset,
//            i64 bytes}, u64 chunk count, u64 chunk hashes (XXH3-64) [chunk count].
//   trailer  24 bytes: u64 footer bytes, u64 XXH3-64 of the footer, magic "FRUGALND".
//
// The footer comes last, so a torn write is detected by a missing or wrong trailer; the header
// names the run and step, so a shard of another run or step is rejected. Every parse is bounds-
// checked: nothing read from the file is trusted before it is checked, and a failure is
// kDataLoss naming the file and the byte offset where it was found.
// Thread-safety: read_shard_info is thread-safe; a ShardWriter or ShardReader is used by one
// thread at a time (the reader verifies through one scratch chunk), so open one per thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/layout.h"
#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::ckpt {

inline constexpr uint32_t kShardFormatVersion = 1;
inline constexpr int64_t kShardHeaderBytes = 128;
inline constexpr size_t kMaxRunIdLength = 32;
inline constexpr int kMaxShapeDims = 8;  // a record's rank (ndim) is at most this
inline constexpr int64_t kShardTrailerBytes = 24;

// File offsets of the header fields that name a shard, for messages that point into the file.
inline constexpr int64_t kShardRunIdOffset = 16;
inline constexpr int64_t kShardStepOffset = 48;
inline constexpr int64_t kShardRankOffset = 56;
inline constexpr int64_t kShardWorldSizeOffset = 60;
inline constexpr int64_t kShardChunkBytesOffset = 64;

// True for a run id the format can hold: 1..32 printable ASCII characters other than space and
// '/', since it also becomes part of a directory name (tmp_step_dir_name).
bool is_valid_run_id(std::string_view run_id);

struct ShardHeader {
  std::string run_id;  // <= 32 ASCII characters
  int64_t step = 0;
  int32_t rank = 0;
  int32_t world_size = 1;
  int64_t chunk_bytes = 4 << 20;  // > 0
};

// A per-rank piece of state inside the data region.
struct ShardRecord {
  EntryInfo info;
  int64_t data_offset = 0;  // from the start of the data region
};

// What the footer describes.
struct ShardContents {
  ByteRange replicated;  // the share of the replicated space at data offset 0
  std::vector<ShardRecord> records;
};

struct ShardInfo {
  ShardHeader header;
  ShardContents contents;
  int64_t data_bytes = 0;
  std::vector<uint64_t> chunk_hashes;
  int64_t file_bytes = 0;
  uint64_t footer_hash = 0;  // the trailer's hash; the manifest records it
};

// Writes one shard file sequentially: header, then data as it is appended (hashed chunk by chunk
// and written in large blocks), then footer and trailer; finish() fsyncs and closes. Any failure
// (ENOSPC, EIO) is returned with the path; the partial file is left for the caller to remove.
class ShardWriter {
 public:
  static Result<std::unique_ptr<ShardWriter>> create(const std::string& path,
                                                     const ShardHeader& header);
  ~ShardWriter();  // closes the file if finish() was not reached
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  Status append(ConstBytes data);
  int64_t data_bytes() const;
  // REQUIRES: contents describe exactly the bytes appended. Writes footer and trailer, fsyncs the
  // file, closes it, and returns what read_shard_info would return for it.
  Result<ShardInfo> finish(const ShardContents& contents);

 private:
  struct Impl;
  explicit ShardWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Reads and checks header, trailer and footer (not the data chunks).
Result<ShardInfo> read_shard_info(const std::string& path);

// Random access to a shard's data with verification: every chunk a read touches is read whole
// and its hash checked before any of its bytes are returned.
class ShardReader {
 public:
  static Result<std::unique_ptr<ShardReader>> open(const std::string& path, ShardInfo info);
  ~ShardReader();
  ShardReader(const ShardReader&) = delete;
  ShardReader& operator=(const ShardReader&) = delete;

  const ShardInfo& info() const;
  // Copies data bytes [data_offset, data_offset + out.size()) into out.
  Status read(int64_t data_offset, MutableBytes out);
  // Reads every chunk and checks its hash; the first mismatch names the file offset.
  Status verify_all();

 private:
  struct Impl;
  explicit ShardReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace frugal::ckpt
