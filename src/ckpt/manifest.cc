#include "ckpt/manifest.h"

#include <cinttypes>
#include <cstdio>
#include <limits>
#include <set>

#include "ckpt/bytes_io.h"
#include "ckpt/files.h"

namespace frugal::ckpt {
namespace {

using nlohmann::json;
// Written with its keys in the documented order, so the file reads top-down; parsed unordered.
using ordered_json = nlohmann::ordered_json;

constexpr std::string_view kFormatName = "frugal-checkpoint";
constexpr std::string_view kHashPrefix = "xxh3:";
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();

std::string hex16(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016" PRIx64, value);
  return text;
}

// Exactly 16 lowercase hex digits: a manifest has one spelling of each hash, so any bit flip in
// one is detected.
std::optional<uint64_t> parse_hex16(std::string_view text) {
  if (text.size() != 16) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (digit < 0) return std::nullopt;
    value = value << 4 | static_cast<uint64_t>(digit);
  }
  return value;
}

// Never throws: names are user data and may not be valid UTF-8.
template <typename Json>
std::string dump(const Json& value) {
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

ordered_json shape_json(const Shape& shape) {
  ordered_json dims = ordered_json::array();
  for (int64_t dim : shape) dims.push_back(dim);
  return dims;
}

ordered_json entry_json(const EntryInfo& entry, std::string_view offset_key, int64_t offset) {
  return ordered_json{{"name", entry.name},
                      {"dtype", dtype_name(entry.dtype)},
                      {"shape", shape_json(entry.shape)},
                      {std::string(offset_key), offset},
                      {"bytes", entry.bytes}};
}

ordered_json shard_json(const ManifestShard& shard) {
  ordered_json records = ordered_json::array();
  for (const ShardRecord& record : shard.records) {
    records.push_back(entry_json(record.info, "data_offset", record.data_offset));
  }
  return ordered_json{{"file", shard.file},
                      {"rank", shard.rank},
                      {"file_bytes", shard.file_bytes},
                      {"footer_hash", hex16(shard.footer_hash)},
                      {"replicated", {shard.replicated.lo, shard.replicated.hi}},
                      {"records", std::move(records)}};
}

// An array with one element per line: a manifest of thousands of entries stays greppable.
std::string array_lines(const std::vector<ordered_json>& elements) {
  if (elements.empty()) return "[]";
  std::string text = "[\n";
  for (size_t i = 0; i < elements.size(); ++i) {
    text += "    " + dump(elements[i]) + (i + 1 < elements.size() ? ",\n" : "\n");
  }
  return text + "  ]";
}

// ---------------------------------------------------------------------------------------------
// Parsing: every value is checked for presence, type and range before use.

// One JSON object and its name in messages ("shards[2]"); errors are kDataLoss naming the field.
class Fields {
 public:
  Fields(const json& object, std::string prefix, std::string_view path)
      : object_(object), prefix_(std::move(prefix)), path_(path) {}

  std::string name(std::string_view key) const {
    return prefix_.empty() ? std::string(key) : prefix_ + "." + std::string(key);
  }
  Status error(std::string_view field, std::string_view what) const {
    return data_loss(std::string(path_) + ": field '" + std::string(field) + "' " +
                     std::string(what));
  }

  Result<const json*> value(std::string_view key) const {
    auto it = object_.find(key);
    if (it == object_.end()) return error(name(key), "is missing");
    return &*it;
  }

  Result<int64_t> integer(std::string_view key, int64_t min, int64_t max = kInt64Max) const {
    FRUGAL_ASSIGN_OR_RETURN(const json* v, value(key));
    return integer_value(*v, name(key), min, max);
  }

  // An integer element of an array (or any value), named `field` in messages.
  Result<int64_t> integer_value(const json& v, const std::string& field, int64_t min,
                                int64_t max) const {
    const bool fits = v.is_number_integer() &&
                      (!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t{kInt64Max});
    const int64_t number = fits ? v.get<int64_t>() : 0;
    if (!fits || number < min || number > max) {
      return error(field, "must be an integer in [" + std::to_string(min) + ", " +
                              std::to_string(max) + "], not " + dump(v).substr(0, 40));
    }
    return number;
  }

  Result<std::string> string(std::string_view key) const {
    FRUGAL_ASSIGN_OR_RETURN(const json* v, value(key));
    if (!v->is_string()) return error(name(key), "must be a string, not " + dump(*v).substr(0, 40));
    return v->get<std::string>();
  }

  Result<const json*> typed(std::string_view key, json::value_t type, std::string_view what) const {
    FRUGAL_ASSIGN_OR_RETURN(const json* v, value(key));
    if (v->type() != type) return error(name(key), "must be " + std::string(what));
    return v;
  }
  Result<const json*> array(std::string_view key) const {
    return typed(key, json::value_t::array, "an array");
  }

  // Element i of array `key`, which must be an object.
  Result<Fields> element(const json& array, std::string_view key, size_t i) const {
    const std::string field = name(key) + "[" + std::to_string(i) + "]";
    if (!array[i].is_object()) return error(field, "must be an object");
    return Fields(array[i], field, path_);
  }

 private:
  const json& object_;
  std::string prefix_;
  std::string_view path_;
};

Result<Shape> parse_shape(const Fields& f) {
  FRUGAL_ASSIGN_OR_RETURN(const json* dims, f.array("shape"));
  if (dims->size() > kMaxShapeDims) {
    return f.error(f.name("shape"), "has more than " + std::to_string(kMaxShapeDims) + " dims");
  }
  Shape shape;
  for (size_t i = 0; i < dims->size(); ++i) {
    const std::string field = f.name("shape") + "[" + std::to_string(i) + "]";
    FRUGAL_ASSIGN_OR_RETURN(int64_t dim, f.integer_value((*dims)[i], field, 0, kInt64Max));
    shape.push_back(dim);
  }
  return shape;
}

// name, dtype, shape and bytes, with bytes consistent with dtype and shape.
Result<EntryInfo> parse_entry(const Fields& f) {
  EntryInfo entry;
  FRUGAL_ASSIGN_OR_RETURN(entry.name, f.string("name"));
  FRUGAL_ASSIGN_OR_RETURN(std::string dtype, f.string("dtype"));
  Result<DType> parsed = parse_dtype(dtype);
  if (!parsed.is_ok()) return f.error(f.name("dtype"), parsed.status().message());
  entry.dtype = parsed.value();
  FRUGAL_ASSIGN_OR_RETURN(entry.shape, parse_shape(f));
  FRUGAL_ASSIGN_OR_RETURN(entry.bytes, f.integer("bytes", 0));
  const int64_t expected = entry_bytes(entry.dtype, entry.shape);
  if (entry.bytes != expected) {
    return f.error(f.name("bytes"), "is " + std::to_string(entry.bytes) + ", but " + dtype +
                                        shape_to_string(entry.shape) + " needs " +
                                        std::to_string(expected));
  }
  return entry;
}

class ManifestParser {
 public:
  explicit ManifestParser(std::string_view path) : path_(path) {}

  Result<Manifest> parse(const json& doc) {
    if (!doc.is_object()) return data_loss(std::string(path_) + ": not a JSON object");
    const Fields top(doc, "", path_);
    FRUGAL_RETURN_IF_ERROR(parse_identity(top));
    FRUGAL_RETURN_IF_ERROR(parse_replicated(top));
    FRUGAL_RETURN_IF_ERROR(parse_shards(top));
    FRUGAL_ASSIGN_OR_RETURN(const json* meta,
                            top.typed("meta", json::value_t::object, "an object"));
    manifest_.meta = *meta;
    return std::move(manifest_);
  }

 private:
  Status parse_identity(const Fields& top) {
    FRUGAL_ASSIGN_OR_RETURN(std::string format, top.string("format"));
    if (format != kFormatName) {
      return top.error("format",
                       "is '" + format.substr(0, 40) + "', not '" + std::string(kFormatName) + "'");
    }
    FRUGAL_ASSIGN_OR_RETURN(int64_t version, top.integer("version", 0));
    if (version != kManifestVersion) {
      return top.error("version", "is " + std::to_string(version) + "; this build reads version " +
                                      std::to_string(kManifestVersion));
    }
    manifest_.version = kManifestVersion;
    FRUGAL_ASSIGN_OR_RETURN(manifest_.run_id, top.string("run_id"));
    if (!is_valid_run_id(manifest_.run_id)) return top.error("run_id", "is not a valid run id");
    FRUGAL_ASSIGN_OR_RETURN(manifest_.step, top.integer("step", 0));
    FRUGAL_ASSIGN_OR_RETURN(int64_t world,
                            top.integer("world_size", 1, std::numeric_limits<int32_t>::max()));
    manifest_.world_size = static_cast<int>(world);
    FRUGAL_ASSIGN_OR_RETURN(manifest_.chunk_bytes, top.integer("chunk_bytes", 1));
    FRUGAL_ASSIGN_OR_RETURN(manifest_.created_unix_ms, top.integer("created_unix_ms", 0));
    return Status::ok();
  }

  // The entries tile [0, replicated_bytes) in order: pack() must put each at its offset.
  Status parse_replicated(const Fields& top) {
    FRUGAL_ASSIGN_OR_RETURN(const int64_t total, top.integer("replicated_bytes", 0));
    FRUGAL_ASSIGN_OR_RETURN(const json* list, top.array("replicated"));
    std::vector<EntryInfo> entries;
    std::vector<int64_t> offsets;
    std::set<std::string> names;
    int64_t sum = 0;
    for (size_t i = 0; i < list->size(); ++i) {
      FRUGAL_ASSIGN_OR_RETURN(const Fields f, top.element(*list, "replicated", i));
      FRUGAL_ASSIGN_OR_RETURN(EntryInfo entry, parse_entry(f));
      FRUGAL_ASSIGN_OR_RETURN(int64_t offset, f.integer("offset", 0));
      if (entry.bytes > total - sum) {
        return f.error(f.name("bytes"),
                       "takes the entries past replicated_bytes " + std::to_string(total));
      }
      if (!names.insert(entry.name).second) {
        return f.error(f.name("name"), "'" + entry.name + "' appears twice");
      }
      sum += entry.bytes;
      offsets.push_back(offset);
      entries.push_back(std::move(entry));
    }
    manifest_.replicated = pack(std::move(entries));
    for (size_t i = 0; i < offsets.size(); ++i) {
      if (offsets[i] != manifest_.replicated.offsets[i]) {
        return top.error("replicated[" + std::to_string(i) + "].offset",
                         "is " + std::to_string(offsets[i]) + ", but packed in order the entry " +
                             "starts at " + std::to_string(manifest_.replicated.offsets[i]));
      }
    }
    if (manifest_.replicated.total != total) {
      return top.error("replicated_bytes", "is " + std::to_string(total) +
                                               ", but the entries add up to " +
                                               std::to_string(manifest_.replicated.total));
    }
    return Status::ok();
  }

  Status parse_shards(const Fields& top) {
    FRUGAL_ASSIGN_OR_RETURN(const json* list, top.array("shards"));
    if (list->size() != static_cast<size_t>(manifest_.world_size)) {
      return top.error("shards", "has " + std::to_string(list->size()) +
                                     " entries for world_size " +
                                     std::to_string(manifest_.world_size));
    }
    int64_t tiled = 0;  // the shards' replicated ranges cover [0, tiled) so far
    for (size_t i = 0; i < list->size(); ++i) {
      FRUGAL_ASSIGN_OR_RETURN(const Fields f, top.element(*list, "shards", i));
      FRUGAL_ASSIGN_OR_RETURN(ManifestShard shard, parse_shard(f, static_cast<int>(i), tiled));
      tiled = shard.replicated.hi;
      manifest_.shards.push_back(std::move(shard));
    }
    if (tiled != manifest_.replicated.total) {
      return top.error("shards", "replicated ranges end at " + std::to_string(tiled) +
                                     ", not at replicated_bytes " +
                                     std::to_string(manifest_.replicated.total));
    }
    return Status::ok();
  }

  Result<ManifestShard> parse_shard(const Fields& f, int rank, int64_t tiled) {
    ManifestShard shard;
    FRUGAL_ASSIGN_OR_RETURN(shard.file, f.string("file"));
    const std::string expected_file = shard_file_name(rank, manifest_.world_size);
    if (shard.file != expected_file) {
      return f.error(f.name("file"),
                     "is '" + shard.file.substr(0, 80) + "', not '" + expected_file + "'");
    }
    FRUGAL_ASSIGN_OR_RETURN(int64_t parsed_rank, f.integer("rank", rank, rank));
    shard.rank = static_cast<int>(parsed_rank);
    FRUGAL_ASSIGN_OR_RETURN(shard.file_bytes, f.integer("file_bytes", kShardHeaderBytes));
    FRUGAL_ASSIGN_OR_RETURN(std::string footer_hash, f.string("footer_hash"));
    std::optional<uint64_t> hash = parse_hex16(footer_hash);
    if (!hash) return f.error(f.name("footer_hash"), "must be 16 lowercase hex digits");
    shard.footer_hash = *hash;
    FRUGAL_ASSIGN_OR_RETURN(shard.replicated, parse_replicated_range(f, tiled));
    FRUGAL_ASSIGN_OR_RETURN(shard.records, parse_records(f, shard));
    return shard;
  }

  // [lo, hi], starting where the previous rank's range ended.
  Result<ByteRange> parse_replicated_range(const Fields& f, int64_t tiled) {
    FRUGAL_ASSIGN_OR_RETURN(const json* pair, f.array("replicated"));
    const std::string field = f.name("replicated");
    if (pair->size() != 2) return f.error(field, "must be [lo, hi]");
    ByteRange range;
    FRUGAL_ASSIGN_OR_RETURN(range.lo, f.integer_value((*pair)[0], field + "[0]", tiled, tiled));
    FRUGAL_ASSIGN_OR_RETURN(
        range.hi, f.integer_value((*pair)[1], field + "[1]", range.lo, manifest_.replicated.total));
    return range;
  }

  Result<std::vector<ShardRecord>> parse_records(const Fields& f, const ManifestShard& shard) {
    FRUGAL_ASSIGN_OR_RETURN(const json* list, f.array("records"));
    std::vector<ShardRecord> records;
    for (size_t j = 0; j < list->size(); ++j) {
      FRUGAL_ASSIGN_OR_RETURN(const Fields r, f.element(*list, "records", j));
      ShardRecord record;
      FRUGAL_ASSIGN_OR_RETURN(record.info, parse_entry(r));
      // Records follow the replicated share and lie inside the file; the shard's footer, which
      // verify_checkpoint compares with them, says exactly where.
      FRUGAL_ASSIGN_OR_RETURN(record.data_offset, r.integer("data_offset", shard.replicated.size(),
                                                            shard.file_bytes - record.info.bytes));
      records.push_back(std::move(record));
    }
    return records;
  }

  std::string_view path_;
  Manifest manifest_;
};

// Checks the final "xxh3:<hex>\n" line against the bytes before it; returns those bytes.
Result<std::string_view> check_hash_line(std::string_view text, std::string_view path) {
  const std::string where(path);
  if (text.size() < 2 || text.back() != '\n') {
    return data_loss(where + ": no final hash line (the file does not end with a newline) at " +
                     "byte offset " + std::to_string(text.size()));
  }
  const size_t newline = text.rfind('\n', text.size() - 2);
  const size_t line_start = newline == std::string_view::npos ? 0 : newline + 1;
  const std::string_view line = text.substr(line_start, text.size() - 1 - line_start);
  std::optional<uint64_t> expected;
  if (line.starts_with(kHashPrefix)) expected = parse_hex16(line.substr(kHashPrefix.size()));
  if (!expected) {
    return data_loss(where + ": the last line is not 'xxh3:<16 lowercase hex digits>' at byte " +
                     "offset " + std::to_string(line_start));
  }
  const std::string_view body = text.substr(0, line_start);
  if (const uint64_t actual = xxh3(body); actual != *expected) {
    return data_loss(where + ": hash mismatch: the JSON hashes to " + hex16(actual) +
                     ", the last line says " + hex16(*expected) + " at byte offset " +
                     std::to_string(line_start));
  }
  return body;
}

}  // namespace

std::string encode_manifest(const Manifest& manifest) {
  std::vector<ordered_json> replicated;
  const PackedLayout& layout = manifest.replicated;
  for (size_t i = 0; i < layout.entries.size(); ++i) {
    replicated.push_back(entry_json(layout.entries[i], "offset", layout.offsets[i]));
  }
  std::vector<ordered_json> shards;
  for (const ManifestShard& shard : manifest.shards) shards.push_back(shard_json(shard));

  std::string text = "{\n";
  auto field = [&text](std::string_view key, const std::string& value) {
    text += "  \"" + std::string(key) + "\": " + value + ",\n";
  };
  field("format", dump(json(kFormatName)));
  field("version", std::to_string(manifest.version));
  field("run_id", dump(json(manifest.run_id)));
  field("step", std::to_string(manifest.step));
  field("world_size", std::to_string(manifest.world_size));
  field("chunk_bytes", std::to_string(manifest.chunk_bytes));
  field("created_unix_ms", std::to_string(manifest.created_unix_ms));
  field("replicated_bytes", std::to_string(layout.total));
  field("replicated", array_lines(replicated));
  field("shards", array_lines(shards));
  text += "  \"meta\": " + dump(manifest.meta) + "\n}\n";
  return text + std::string(kHashPrefix) + hex16(xxh3(text)) + "\n";
}

Result<Manifest> parse_manifest(std::string_view text, std::string_view path) {
  FRUGAL_ASSIGN_OR_RETURN(std::string_view body, check_hash_line(text, path));
  // nlohmann::json reports errors by exception; this is the boundary (core/status.h).
  try {
    return ManifestParser(path).parse(json::parse(body));
  } catch (const json::exception& e) {
    return data_loss(std::string(path) + ": invalid JSON: " + e.what());
  }
}

}  // namespace frugal::ckpt
