#include "ckpt/shard_file.h"

#include <fcntl.h>

#include <algorithm>
#include <limits>
#include <set>
#include <string_view>

#include "ckpt/bytes_io.h"
#include "ckpt/files_internal.h"

namespace frugal::ckpt {
namespace {

constexpr std::string_view kHeaderMagic = "FRUGALCK";
constexpr std::string_view kTrailerMagic = "FRUGALND";

// Header field offsets (see the layout in shard_file.h).
constexpr size_t kVersionOffset = 8;
constexpr size_t kHeaderSizeOffset = 12;
constexpr size_t kRunIdOffset = kShardRunIdOffset;
constexpr size_t kStepOffset = kShardStepOffset;
constexpr size_t kRankOffset = kShardRankOffset;
constexpr size_t kWorldOffset = kShardWorldSizeOffset;
constexpr size_t kChunkBytesOffset = kShardChunkBytesOffset;
constexpr size_t kHeaderHashOffset = 120;

// Trailer: u64 footer bytes, u64 footer hash, magic.
constexpr int64_t kTrailerBytes = kShardTrailerBytes;
constexpr size_t kFooterHashOffset = 8;
constexpr size_t kTrailerMagicOffset = 16;

// The smallest footer: data bytes, replicated lo and hi, record count, chunk count.
constexpr int64_t kMinFooterBytes = 8 + 8 + 8 + 4 + 8;
// The smallest record: name length, dtype, ndim, data offset, bytes.
constexpr size_t kMinRecordBytes = 2 + 1 + 1 + 8 + 8;

// The kDataLoss every parse failure returns: "<path>: <what> at byte offset <offset>".
Status corrupt(const std::string& path, int64_t offset, std::string_view what) {
  return data_loss(path + ": " + std::string(what) + " at byte offset " + std::to_string(offset));
}

int64_t chunk_count(int64_t data_bytes, int64_t chunk_bytes) {
  return data_bytes / chunk_bytes + (data_bytes % chunk_bytes != 0 ? 1 : 0);
}

bool valid_dtype_code(uint8_t code) { return code <= static_cast<uint8_t>(DType::kU8); }

Status check_header_fields(const ShardHeader& header) {
  if (!is_valid_run_id(header.run_id)) {
    return invalid_argument("shard header: run id '" + header.run_id +
                            "' is invalid; it must be 1..32 printable ASCII characters other "
                            "than space and '/'");
  }
  if (header.step < 0 || header.chunk_bytes <= 0 || header.world_size <= 0 || header.rank < 0 ||
      header.rank >= header.world_size) {
    return invalid_argument("shard header: step " + std::to_string(header.step) + ", rank " +
                            std::to_string(header.rank) + " of " +
                            std::to_string(header.world_size) + ", chunk bytes " +
                            std::to_string(header.chunk_bytes) +
                            " is invalid; valid: step >= 0, 0 <= rank < world size, chunk bytes "
                            "> 0");
  }
  return Status::ok();
}

std::string encode_header(const ShardHeader& header) {
  std::string out(kShardHeaderBytes, '\0');
  out.replace(0, kHeaderMagic.size(), kHeaderMagic);
  store_le<uint32_t>(out, kVersionOffset, kShardFormatVersion);
  store_le<uint32_t>(out, kHeaderSizeOffset, static_cast<uint32_t>(kShardHeaderBytes));
  out.replace(kRunIdOffset, header.run_id.size(), header.run_id);
  store_le<int64_t>(out, kStepOffset, header.step);
  store_le<int32_t>(out, kRankOffset, header.rank);
  store_le<int32_t>(out, kWorldOffset, header.world_size);
  store_le<int64_t>(out, kChunkBytesOffset, header.chunk_bytes);
  store_le<uint64_t>(out, kHeaderHashOffset,
                     xxh3(std::string_view(out).substr(0, kHeaderHashOffset)));
  return out;
}

// The magic, version and size come first so that a file of another kind or version gets a
// message saying so rather than "hash mismatch".
Result<ShardHeader> decode_header(ConstBytes bytes, const std::string& path) {
  if (std::string_view(reinterpret_cast<const char*>(bytes.data()), kHeaderMagic.size()) !=
      kHeaderMagic) {
    return corrupt(path, 0, "not a Frugal shard file (no \"FRUGALCK\" magic)");
  }
  if (uint32_t version = load_le<uint32_t>(bytes, kVersionOffset); version != kShardFormatVersion) {
    return corrupt(path, kVersionOffset,
                   "unsupported format version " + std::to_string(version) +
                       " (this build reads version " + std::to_string(kShardFormatVersion) + ")");
  }
  if (uint32_t size = load_le<uint32_t>(bytes, kHeaderSizeOffset); size != kShardHeaderBytes) {
    return corrupt(
        path, kHeaderSizeOffset,
        "header size " + std::to_string(size) + " is not " + std::to_string(kShardHeaderBytes));
  }
  if (xxh3(bytes.first(kHeaderHashOffset)) != load_le<uint64_t>(bytes, kHeaderHashOffset)) {
    return corrupt(path, kHeaderHashOffset, "header hash mismatch");
  }
  ShardHeader header;
  const std::string_view run_id(reinterpret_cast<const char*>(bytes.data()) + kRunIdOffset,
                                kMaxRunIdLength);
  header.run_id = std::string(run_id.substr(0, run_id.find('\0')));
  if (!is_valid_run_id(header.run_id) ||
      run_id.find_first_not_of('\0', header.run_id.size()) != std::string_view::npos) {
    return corrupt(path, kRunIdOffset, "invalid run id");
  }
  header.step = load_le<int64_t>(bytes, kStepOffset);
  header.rank = load_le<int32_t>(bytes, kRankOffset);
  header.world_size = load_le<int32_t>(bytes, kWorldOffset);
  header.chunk_bytes = load_le<int64_t>(bytes, kChunkBytesOffset);
  if (header.step < 0) return corrupt(path, kStepOffset, "negative step");
  if (header.world_size <= 0) return corrupt(path, kWorldOffset, "world size is not positive");
  if (header.rank < 0 || header.rank >= header.world_size) {
    return corrupt(path, kRankOffset,
                   "rank " + std::to_string(header.rank) + " is outside [0, " +
                       std::to_string(header.world_size) + ")");
  }
  if (header.chunk_bytes <= 0) {
    return corrupt(path, kChunkBytesOffset, "chunk bytes is not positive");
  }
  return header;
}

Result<std::string> encode_footer(const ShardInfo& info) {
  const ShardContents& contents = info.contents;
  if (contents.records.size() > std::numeric_limits<uint32_t>::max()) {
    return invalid_argument("shard footer: too many records");
  }
  std::string out;
  put_le<uint64_t>(out, static_cast<uint64_t>(info.data_bytes));
  put_le<int64_t>(out, contents.replicated.lo);
  put_le<int64_t>(out, contents.replicated.hi);
  put_le<uint32_t>(out, static_cast<uint32_t>(contents.records.size()));
  for (const ShardRecord& record : contents.records) {
    const EntryInfo& entry = record.info;
    if (entry.name.size() > std::numeric_limits<uint16_t>::max() ||
        entry.shape.size() > kMaxShapeDims) {
      return invalid_argument("shard record '" + entry.name.substr(0, 80) +
                              "': the name must be < 64 KiB and the shape have <= " +
                              std::to_string(kMaxShapeDims) + " dimensions");
    }
    put_le<uint16_t>(out, static_cast<uint16_t>(entry.name.size()));
    out += entry.name;
    put_le<uint8_t>(out, static_cast<uint8_t>(entry.dtype));
    put_le<uint8_t>(out, static_cast<uint8_t>(entry.shape.size()));
    for (int64_t dim : entry.shape) put_le<int64_t>(out, dim);
    put_le<int64_t>(out, record.data_offset);
    put_le<int64_t>(out, entry.bytes);
  }
  put_le<uint64_t>(out, info.chunk_hashes.size());
  for (uint64_t hash : info.chunk_hashes) put_le<uint64_t>(out, hash);
  return out;
}

// Decodes and checks a footer the trailer's hash already vouched for. Hash or no hash, nothing
// is trusted: a buggy or hostile writer can produce a well-hashed footer.
class FooterParser {
 public:
  FooterParser(ConstBytes footer, int64_t footer_offset, const std::string& path)
      : cursor_(footer, footer_offset), path_(path) {}

  // Fills info's contents, data bytes and chunk hashes; the header's chunk bytes must be set.
  Status parse(int64_t expected_data_bytes, ShardInfo* info) {
    FRUGAL_RETURN_IF_ERROR(parse_data_bytes(expected_data_bytes, info));
    FRUGAL_RETURN_IF_ERROR(parse_replicated(info));
    FRUGAL_RETURN_IF_ERROR(parse_records(info));
    FRUGAL_RETURN_IF_ERROR(parse_chunk_hashes(info));
    if (cursor_.remaining() != 0) {
      return corrupt(path_, cursor_.offset(),
                     std::to_string(cursor_.remaining()) + " unexpected bytes after the footer");
    }
    return Status::ok();
  }

 private:
  template <typename T>
  Status read(T* value, std::string_view what) {
    if (!cursor_.get(value)) {
      return corrupt(path_, cursor_.offset(), "footer ends inside " + std::string(what));
    }
    return Status::ok();
  }

  Status parse_data_bytes(int64_t expected, ShardInfo* info) {
    const int64_t at = cursor_.offset();
    uint64_t data_bytes = 0;
    FRUGAL_RETURN_IF_ERROR(read(&data_bytes, "the data size"));
    if (data_bytes != static_cast<uint64_t>(expected)) {
      return corrupt(path_, at,
                     "footer says " + std::to_string(data_bytes) + " data bytes, the file holds " +
                         std::to_string(expected));
    }
    info->data_bytes = expected;
    return Status::ok();
  }

  Status parse_replicated(ShardInfo* info) {
    const int64_t at = cursor_.offset();
    ByteRange& range = info->contents.replicated;
    FRUGAL_RETURN_IF_ERROR(read(&range.lo, "the replicated range"));
    FRUGAL_RETURN_IF_ERROR(read(&range.hi, "the replicated range"));
    if (range.lo < 0 || range.hi < range.lo || range.hi - range.lo > info->data_bytes) {
      return corrupt(path_, at,
                     "replicated range [" + std::to_string(range.lo) + ", " +
                         std::to_string(range.hi) + ") is invalid or larger than the data");
    }
    return Status::ok();
  }

  Status parse_records(ShardInfo* info) {
    uint32_t count = 0;
    FRUGAL_RETURN_IF_ERROR(read(&count, "the record count"));
    if (count > cursor_.remaining() / kMinRecordBytes) {
      return corrupt(path_, cursor_.offset(),
                     "record count " + std::to_string(count) + " does not fit in the footer");
    }
    std::vector<int64_t> record_offsets;  // where each record starts, for messages
    for (uint32_t i = 0; i < count; ++i) {
      record_offsets.push_back(cursor_.offset());
      ShardRecord record;
      FRUGAL_RETURN_IF_ERROR(parse_record(*info, &record));
      info->contents.records.push_back(std::move(record));
    }
    return check_records_disjoint(info->contents.records, record_offsets);
  }

  Status parse_record(const ShardInfo& info, ShardRecord* record) {
    const int64_t at = cursor_.offset();
    EntryInfo& entry = record->info;
    uint16_t name_length = 0;
    ConstBytes name;
    FRUGAL_RETURN_IF_ERROR(read(&name_length, "a record name length"));
    if (!cursor_.get_bytes(name_length, &name)) {
      return corrupt(path_, cursor_.offset(), "footer ends inside a record name");
    }
    entry.name.assign(reinterpret_cast<const char*>(name.data()), name.size());
    uint8_t dtype = 0;
    uint8_t ndim = 0;
    FRUGAL_RETURN_IF_ERROR(read(&dtype, "a record dtype"));
    if (!valid_dtype_code(dtype)) {
      return corrupt(path_, cursor_.offset() - 1, "unknown dtype code " + std::to_string(dtype));
    }
    entry.dtype = static_cast<DType>(dtype);
    FRUGAL_RETURN_IF_ERROR(read(&ndim, "a record rank"));
    if (ndim > kMaxShapeDims) {
      return corrupt(
          path_, cursor_.offset() - 1,
          "record rank " + std::to_string(ndim) + " exceeds " + std::to_string(kMaxShapeDims));
    }
    entry.shape.resize(ndim);
    for (int64_t& dim : entry.shape) {
      FRUGAL_RETURN_IF_ERROR(read(&dim, "a record shape"));
      if (dim < 0) return corrupt(path_, cursor_.offset() - 8, "negative dimension");
    }
    FRUGAL_RETURN_IF_ERROR(read(&record->data_offset, "a record data offset"));
    FRUGAL_RETURN_IF_ERROR(read(&entry.bytes, "a record size"));
    return check_record_extent(info, *record, at);
  }

  // A record lies inside the data region, after the replicated share.
  Status check_record_extent(const ShardInfo& info, const ShardRecord& record, int64_t at) {
    const EntryInfo& entry = record.info;
    const int64_t expected_bytes = entry_bytes(entry.dtype, entry.shape);
    if (expected_bytes < 0 || entry.bytes != expected_bytes) {
      return corrupt(path_, at,
                     "record '" + entry.name + "' has " + std::to_string(entry.bytes) +
                         " bytes, but " + std::string(dtype_name(entry.dtype)) +
                         shape_to_string(entry.shape) + " needs " + std::to_string(expected_bytes));
    }
    if (record.data_offset < info.contents.replicated.size() ||
        record.data_offset > info.data_bytes - entry.bytes) {
      return corrupt(path_, at,
                     "record '" + entry.name + "' at data offset " +
                         std::to_string(record.data_offset) + " (" + std::to_string(entry.bytes) +
                         " bytes) is outside [" + std::to_string(info.contents.replicated.size()) +
                         ", " + std::to_string(info.data_bytes) + ")");
    }
    return Status::ok();
  }

  // Records must not overlap each other or share a name: restore looks them up by name.
  Status check_records_disjoint(const std::vector<ShardRecord>& records,
                                const std::vector<int64_t>& record_offsets) {
    std::vector<size_t> order(records.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return records[a].data_offset < records[b].data_offset; });
    int64_t end = 0;
    std::set<std::string_view> names;
    for (size_t i : order) {
      const ShardRecord& record = records[i];
      if (record.info.bytes > 0 && record.data_offset < end) {
        return corrupt(path_, record_offsets[i],
                       "record '" + record.info.name + "' overlaps another record");
      }
      end = std::max(end, record.data_offset + record.info.bytes);
      if (!names.insert(record.info.name).second) {
        return corrupt(path_, record_offsets[i],
                       "record name '" + record.info.name + "' appears twice");
      }
    }
    return Status::ok();
  }

  Status parse_chunk_hashes(ShardInfo* info) {
    const int64_t at = cursor_.offset();
    uint64_t count = 0;
    FRUGAL_RETURN_IF_ERROR(read(&count, "the chunk count"));
    const int64_t expected = chunk_count(info->data_bytes, info->header.chunk_bytes);
    if (count != static_cast<uint64_t>(expected)) {
      return corrupt(path_, at,
                     "chunk count " + std::to_string(count) + " is not the " +
                         std::to_string(expected) + " that " + std::to_string(info->data_bytes) +
                         " data bytes in chunks of " + std::to_string(info->header.chunk_bytes) +
                         " need");
    }
    if (count > cursor_.remaining() / 8) {
      return corrupt(path_, cursor_.offset(), "footer ends inside the chunk hashes");
    }
    info->chunk_hashes.resize(count);
    for (uint64_t& hash : info->chunk_hashes) FRUGAL_RETURN_IF_ERROR(read(&hash, "a chunk hash"));
    return Status::ok();
  }

  ByteCursor cursor_;
  const std::string& path_;
};

// Reads exactly `bytes` bytes at `offset`; a short read means the file was truncated.
Result<std::string> read_exact(int fd, int64_t offset, int64_t bytes, const std::string& path) {
  std::string buffer(static_cast<size_t>(bytes), '\0');
  FRUGAL_ASSIGN_OR_RETURN(
      size_t got,
      pread_all(fd, offset, {reinterpret_cast<std::byte*>(buffer.data()), buffer.size()}, path));
  if (got < buffer.size()) {
    return corrupt(path, offset + static_cast<int64_t>(got), "truncated: the file ends");
  }
  return buffer;
}

std::string encode_trailer(std::string_view footer) {
  std::string out(kTrailerBytes, '\0');
  store_le<uint64_t>(out, 0, footer.size());
  store_le<uint64_t>(out, kFooterHashOffset, xxh3(footer));
  out.replace(kTrailerMagicOffset, kTrailerMagic.size(), kTrailerMagic);
  return out;
}

// Checks the trailer at the end of a file of `file_bytes` bytes; returns the footer size.
Result<int64_t> check_trailer(ConstBytes trailer, int64_t file_bytes, const std::string& path) {
  const int64_t trailer_offset = file_bytes - kTrailerBytes;
  if (std::string_view(reinterpret_cast<const char*>(trailer.data()) + kTrailerMagicOffset,
                       kTrailerMagic.size()) != kTrailerMagic) {
    return corrupt(path, trailer_offset + static_cast<int64_t>(kTrailerMagicOffset),
                   "no \"FRUGALND\" trailer magic (a torn or truncated write)");
  }
  const uint64_t footer_bytes = load_le<uint64_t>(trailer, 0);
  const uint64_t room = static_cast<uint64_t>(file_bytes - kShardHeaderBytes - kTrailerBytes);
  if (footer_bytes < static_cast<uint64_t>(kMinFooterBytes) || footer_bytes > room) {
    return corrupt(path, trailer_offset,
                   "footer size " + std::to_string(footer_bytes) + " does not fit in the file");
  }
  return static_cast<int64_t>(footer_bytes);
}

}  // namespace

bool is_valid_run_id(std::string_view run_id) {
  return !run_id.empty() && run_id.size() <= kMaxRunIdLength &&
         std::all_of(run_id.begin(), run_id.end(),
                     [](char c) { return c > ' ' && c <= '~' && c != '/'; });
}

// ---------------------------------------------------------------------------------------------
// ShardWriter

struct ShardWriter::Impl {
  std::string path;
  UniqueFd fd;
  ShardHeader header;
  std::vector<std::byte> partial;  // the bytes of the current incomplete chunk
  int64_t written_data_bytes = 0;  // whole chunks already written
  std::vector<uint64_t> chunk_hashes;
  Status failure;  // sticky: after a failed write the file's contents are unknown
  bool finished = false;

  Status usable() const {
    if (finished) return failed_precondition(path + ": the shard writer has already finished");
    return failure;
  }

  // Hashes each chunk of `bytes` (whole chunks, except at finish()) and writes them in one go.
  Status write_chunks(ConstBytes bytes) {
    const size_t chunk = static_cast<size_t>(header.chunk_bytes);
    for (size_t lo = 0; lo < bytes.size(); lo += chunk) {
      chunk_hashes.push_back(xxh3(bytes.subspan(lo, std::min(chunk, bytes.size() - lo))));
    }
    FRUGAL_RETURN_IF_ERROR(write_all(fd.get(), bytes, path));
    // Starts writing these pages back now, so the disk works while the next chunks are hashed
    // and copied, and the final fsync has little left to flush. A hint: failure changes nothing.
    (void)::sync_file_range(fd.get(), kShardHeaderBytes + written_data_bytes,
                            static_cast<off_t>(bytes.size()), SYNC_FILE_RANGE_WRITE);
    written_data_bytes += static_cast<int64_t>(bytes.size());
    return Status::ok();
  }

  // Only a partial chunk is buffered; runs of whole chunks go straight to write(2).
  Status append(ConstBytes data) {
    const size_t chunk = static_cast<size_t>(header.chunk_bytes);
    if (!partial.empty()) {
      const size_t take = std::min(chunk - partial.size(), data.size());
      partial.insert(partial.end(), data.begin(), data.begin() + static_cast<ptrdiff_t>(take));
      data = data.subspan(take);
      if (partial.size() < chunk) return Status::ok();
      FRUGAL_RETURN_IF_ERROR(write_chunks(partial));
      partial.clear();
    }
    const size_t whole = data.size() / chunk * chunk;
    if (whole > 0) FRUGAL_RETURN_IF_ERROR(write_chunks(data.first(whole)));
    partial.assign(data.begin() + static_cast<ptrdiff_t>(whole), data.end());
    return Status::ok();
  }

  Result<ShardInfo> finish(const ShardContents& contents) {
    if (!partial.empty()) FRUGAL_RETURN_IF_ERROR(write_chunks(partial));
    partial.clear();
    ShardInfo info;
    info.header = header;
    info.contents = contents;
    info.data_bytes = written_data_bytes;
    info.chunk_hashes = chunk_hashes;
    FRUGAL_ASSIGN_OR_RETURN(std::string footer, encode_footer(info));
    FRUGAL_RETURN_IF_ERROR(check_own_footer(footer));
    const std::string trailer = encode_trailer(footer);
    FRUGAL_RETURN_IF_ERROR(write_all(fd.get(), text_bytes(footer + trailer), path));
    FRUGAL_RETURN_IF_ERROR(fsync_file(fd.get(), path));
    FRUGAL_RETURN_IF_ERROR(fd.close(path));
    info.file_bytes =
        kShardHeaderBytes + info.data_bytes + static_cast<int64_t>(footer.size()) + kTrailerBytes;
    info.footer_hash = xxh3(footer);
    return info;
  }

  // Runs the reader's checks on the footer about to be written, so that the writer can never
  // commit a file read_shard_info rejects (e.g. records that overlap or overrun the data).
  Status check_own_footer(const std::string& footer) const {
    ShardInfo parsed;
    parsed.header = header;
    FooterParser parser(text_bytes(footer), kShardHeaderBytes + written_data_bytes, path);
    if (Status s = parser.parse(written_data_bytes, &parsed); !s.is_ok()) {
      return invalid_argument(s.message() +
                              " (ShardWriter::finish: the contents do not describe the data "
                              "appended)");
    }
    return Status::ok();
  }
};

ShardWriter::ShardWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardWriter::~ShardWriter() = default;

Result<std::unique_ptr<ShardWriter>> ShardWriter::create(const std::string& path,
                                                         const ShardHeader& header) {
  if (Status s = check_header_fields(header); !s.is_ok()) return s.with_context(path);
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->header = header;
  FRUGAL_ASSIGN_OR_RETURN(impl->fd, open_file(path, O_WRONLY | O_CREAT | O_TRUNC));
  FRUGAL_RETURN_IF_ERROR(write_all(impl->fd.get(), text_bytes(encode_header(header)), path));
  return std::unique_ptr<ShardWriter>(new ShardWriter(std::move(impl)));
}

Status ShardWriter::append(ConstBytes data) {
  FRUGAL_RETURN_IF_ERROR(impl_->usable());
  impl_->failure = impl_->append(data);
  return impl_->failure;
}

int64_t ShardWriter::data_bytes() const {
  return impl_->written_data_bytes + static_cast<int64_t>(impl_->partial.size());
}

Result<ShardInfo> ShardWriter::finish(const ShardContents& contents) {
  FRUGAL_RETURN_IF_ERROR(impl_->usable());
  Result<ShardInfo> info = impl_->finish(contents);
  if (info.is_ok()) {
    impl_->finished = true;
  } else {
    impl_->failure = info.status();
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// read_shard_info

Result<ShardInfo> read_shard_info(const std::string& path) {
  FRUGAL_ASSIGN_OR_RETURN(UniqueFd fd, open_file(path, O_RDONLY));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t file_bytes, file_size(fd.get(), path));
  if (file_bytes < kShardHeaderBytes) {
    return data_loss(path + ": truncated: " + std::to_string(file_bytes) +
                     " bytes, shorter than the " + std::to_string(kShardHeaderBytes) +
                     "-byte header");
  }
  ShardInfo info;
  info.file_bytes = file_bytes;
  FRUGAL_ASSIGN_OR_RETURN(const std::string header,
                          read_exact(fd.get(), 0, kShardHeaderBytes, path));
  FRUGAL_ASSIGN_OR_RETURN(info.header, decode_header(text_bytes(header), path));
  if (file_bytes < kShardHeaderBytes + kTrailerBytes) {
    return corrupt(path, file_bytes, "truncated: the file ends before the 24-byte trailer");
  }
  const int64_t trailer_offset = file_bytes - kTrailerBytes;
  FRUGAL_ASSIGN_OR_RETURN(const std::string trailer,
                          read_exact(fd.get(), trailer_offset, kTrailerBytes, path));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t footer_bytes,
                          check_trailer(text_bytes(trailer), file_bytes, path));
  const int64_t footer_offset = trailer_offset - footer_bytes;
  FRUGAL_ASSIGN_OR_RETURN(const std::string footer,
                          read_exact(fd.get(), footer_offset, footer_bytes, path));
  info.footer_hash = load_le<uint64_t>(text_bytes(trailer), kFooterHashOffset);
  if (xxh3(footer) != info.footer_hash) {
    return corrupt(path, footer_offset, "footer hash mismatch");
  }
  FooterParser parser(text_bytes(footer), footer_offset, path);
  FRUGAL_RETURN_IF_ERROR(parser.parse(footer_offset - kShardHeaderBytes, &info));
  return info;
}

// ---------------------------------------------------------------------------------------------
// ShardReader

struct ShardReader::Impl {
  std::string path;
  UniqueFd fd;
  ShardInfo info;
  std::vector<std::byte> chunk;  // scratch: one chunk, verified before any byte leaves it

  // Reads chunk `index` whole and checks its hash; the view is valid until the next call.
  Result<ConstBytes> read_chunk(int64_t index) {
    const int64_t chunk_bytes = info.header.chunk_bytes;
    const int64_t lo = index * chunk_bytes;
    const int64_t size = std::min(chunk_bytes, info.data_bytes - lo);
    const int64_t file_offset = kShardHeaderBytes + lo;
    chunk.resize(static_cast<size_t>(size));
    FRUGAL_ASSIGN_OR_RETURN(size_t got, pread_all(fd.get(), file_offset, chunk, path));
    if (got < chunk.size()) {
      return corrupt(path, file_offset + static_cast<int64_t>(got), "truncated: the file ends");
    }
    if (xxh3(ConstBytes(chunk)) != info.chunk_hashes[static_cast<size_t>(index)]) {
      return corrupt(path, file_offset,
                     "data chunk " + std::to_string(index) + " of " +
                         std::to_string(info.chunk_hashes.size()) + " does not match its hash");
    }
    return ConstBytes(chunk);
  }
};

ShardReader::ShardReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ShardReader::~ShardReader() = default;

Result<std::unique_ptr<ShardReader>> ShardReader::open(const std::string& path, ShardInfo info) {
  if (info.header.chunk_bytes <= 0 || info.data_bytes < 0 ||
      info.chunk_hashes.size() !=
          static_cast<size_t>(chunk_count(info.data_bytes, info.header.chunk_bytes))) {
    return invalid_argument(path +
                            ": ShardReader::open: the ShardInfo is inconsistent (use "
                            "read_shard_info)");
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  FRUGAL_ASSIGN_OR_RETURN(impl->fd, open_file(path, O_RDONLY));
  FRUGAL_ASSIGN_OR_RETURN(const int64_t file_bytes, file_size(impl->fd.get(), path));
  if (file_bytes != info.file_bytes) {
    return corrupt(path, std::min(file_bytes, info.file_bytes),
                   "the file is " + std::to_string(file_bytes) + " bytes, its footer describes " +
                       std::to_string(info.file_bytes));
  }
  impl->info = std::move(info);
  return std::unique_ptr<ShardReader>(new ShardReader(std::move(impl)));
}

const ShardInfo& ShardReader::info() const { return impl_->info; }

Status ShardReader::read(int64_t data_offset, MutableBytes out) {
  const int64_t data_bytes = impl_->info.data_bytes;
  const int64_t size = static_cast<int64_t>(out.size());
  if (data_offset < 0 || size > data_bytes || data_offset > data_bytes - size) {
    return out_of_range(impl_->path + ": read of " + std::to_string(size) +
                        " bytes at data offset " + std::to_string(data_offset) +
                        " is outside the data region [0, " + std::to_string(data_bytes) + ")");
  }
  const int64_t chunk_bytes = impl_->info.header.chunk_bytes;
  int64_t position = data_offset;
  while (position < data_offset + size) {
    const int64_t index = position / chunk_bytes;
    FRUGAL_ASSIGN_OR_RETURN(ConstBytes chunk, impl_->read_chunk(index));
    const int64_t from = position - index * chunk_bytes;
    const int64_t count =
        std::min(static_cast<int64_t>(chunk.size()) - from, data_offset + size - position);
    std::copy_n(chunk.begin() + from, count, out.begin() + (position - data_offset));
    position += count;
  }
  return Status::ok();
}

Status ShardReader::verify_all() {
  for (size_t index = 0; index < impl_->info.chunk_hashes.size(); ++index) {
    FRUGAL_RETURN_IF_ERROR(impl_->read_chunk(static_cast<int64_t>(index)).status());
  }
  return Status::ok();
}

}  // namespace frugal::ckpt
