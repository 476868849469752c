#include "ckpt/manifest.h"

#include <gtest/gtest.h>
#include <xxhash.h>

#include <cctype>
#include <cinttypes>
#include <cstdio>
#include <functional>
#include <random>

#include "ckpt/files.h"

namespace frugal::ckpt {
namespace {

using nlohmann::json;

constexpr std::string_view kPath = "/ckpt/step-000000120/MANIFEST";

// Three ranks sharing two replicated entries; rank 1 also has per-rank records.
Manifest sample_manifest() {
  Manifest m;
  m.run_id = "run-abc";
  m.step = 120;
  m.world_size = 3;
  m.chunk_bytes = 256;
  m.created_unix_ms = 1714560000123;
  m.replicated = pack({{"param/fc1.weight", DType::kF32, {16, 8}, 512},
                       {"optim/fc1.weight/exp_avg", DType::kBF16, {16, 8}, 256},
                       {"buffer/steps", DType::kI64, {}, 8}});
  for (int rank = 0; rank < m.world_size; ++rank) {
    ManifestShard shard;
    shard.file = shard_file_name(rank, m.world_size);
    shard.rank = rank;
    shard.replicated = partition(m.replicated.total, rank, m.world_size, m.chunk_bytes);
    shard.file_bytes = 4096 + rank;
    shard.footer_hash = 0x0123456789abcdefULL * static_cast<uint64_t>(rank + 1);
    if (rank == 1) {
      shard.records = {{{"ef/fc1.weight", DType::kF32, {16, 8}, 512}, shard.replicated.size()},
                       {{"rng/cuda", DType::kU8, {16}, 16}, shard.replicated.size() + 512}};
    }
    m.shards.push_back(shard);
  }
  m.meta = {{"model", "mlp"}, {"lr", 0.1}, {"data_cursor", {{"epoch", 2}, {"index", 4096}}}};
  return m;
}

std::string hash_line(std::string_view body) {
  char line[32];
  std::snprintf(line, sizeof(line), "xxh3:%016" PRIx64 "\n", XXH3_64bits(body.data(), body.size()));
  return line;
}

// The manifest with its JSON edited and a correct hash line, to reach the field checks.
std::string edited(const std::function<void(json&)>& edit) {
  const std::string text = encode_manifest(sample_manifest());
  json doc = json::parse(text.substr(0, text.rfind("xxh3:")));
  edit(doc);
  const std::string body = doc.dump(2) + "\n";
  return body + hash_line(body);
}

Status parse_error(const std::function<void(json&)>& edit) {
  return parse_manifest(edited(edit), kPath).status();
}

TEST(Manifest, RoundTrips) {
  const Manifest m = sample_manifest();
  Result<Manifest> parsed = parse_manifest(encode_manifest(m), kPath);
  ASSERT_TRUE(parsed.is_ok()) << parsed.status().to_string();
  const Manifest& p = parsed.value();
  EXPECT_EQ(p.version, 1);
  EXPECT_EQ(p.run_id, m.run_id);
  EXPECT_EQ(p.step, m.step);
  EXPECT_EQ(p.world_size, m.world_size);
  EXPECT_EQ(p.chunk_bytes, m.chunk_bytes);
  EXPECT_EQ(p.created_unix_ms, m.created_unix_ms);
  EXPECT_EQ(p.replicated.total, 776);
  EXPECT_EQ(p.replicated.offsets, (std::vector<int64_t>{0, 512, 768}));
  ASSERT_EQ(p.replicated.entries.size(), 3u);
  EXPECT_EQ(p.replicated.entries[1].name, "optim/fc1.weight/exp_avg");
  EXPECT_EQ(p.replicated.entries[1].dtype, DType::kBF16);
  EXPECT_EQ(p.replicated.entries[1].shape, (Shape{16, 8}));
  EXPECT_EQ(p.replicated.entries[2].shape, Shape{});
  ASSERT_EQ(p.shards.size(), 3u);
  for (size_t r = 0; r < 3; ++r) {
    EXPECT_EQ(p.shards[r].file, m.shards[r].file);
    EXPECT_EQ(p.shards[r].rank, m.shards[r].rank);
    EXPECT_EQ(p.shards[r].file_bytes, m.shards[r].file_bytes);
    EXPECT_EQ(p.shards[r].footer_hash, m.shards[r].footer_hash);
    EXPECT_EQ(p.shards[r].replicated, m.shards[r].replicated);
    ASSERT_EQ(p.shards[r].records.size(), m.shards[r].records.size());
  }
  EXPECT_EQ(p.shards[1].records[1].info.name, "rng/cuda");
  EXPECT_EQ(p.shards[1].records[1].data_offset, m.shards[1].records[1].data_offset);
  EXPECT_EQ(p.meta, m.meta);
}

TEST(Manifest, TextIsJsonThenAHashLine) {
  const std::string text = encode_manifest(sample_manifest());
  ASSERT_TRUE(text.ends_with("\n"));
  const size_t line = text.rfind("xxh3:");
  ASSERT_NE(line, std::string::npos);
  const std::string body = text.substr(0, line);
  EXPECT_EQ(text.substr(line), hash_line(body));
  EXPECT_TRUE(body.starts_with("{\n  \"format\": \"frugal-checkpoint\",\n  \"version\": 1,\n"));
  const json doc = json::parse(body);
  EXPECT_EQ(doc["run_id"], "run-abc");
  EXPECT_EQ(doc["replicated_bytes"], 776);
  EXPECT_EQ(doc["replicated"][2]["dtype"], "i64");
  EXPECT_EQ(doc["replicated"][1]["offset"], 512);
  EXPECT_EQ(doc["shards"][2]["file"], "shard-00002-of-00003.bin");
  EXPECT_EQ(doc["shards"][0]["footer_hash"], "0123456789abcdef");
  EXPECT_EQ(doc["shards"][1]["replicated"], json::array({512, 768}));
  EXPECT_EQ(doc["shards"][1]["records"][0]["data_offset"], 256);
  EXPECT_EQ(doc["meta"]["data_cursor"]["index"], 4096);
}

TEST(Manifest, EverySingleBitFlipIsDetected) {
  const std::string text = encode_manifest(sample_manifest());
  std::mt19937_64 rng(4242);
  for (int trial = 0; trial < 10000; ++trial) {
    const size_t bit = rng() % (text.size() * 8);
    std::string corrupted = text;
    corrupted[bit / 8] = static_cast<char>(corrupted[bit / 8] ^ (1 << (bit % 8)));
    Result<Manifest> parsed = parse_manifest(corrupted, kPath);
    ASSERT_FALSE(parsed.is_ok()) << "flip of bit " << bit % 8 << " at byte " << bit / 8;
    ASSERT_EQ(parsed.status().code(), StatusCode::kDataLoss);
  }
}

TEST(Manifest, EveryTruncationIsDetected) {
  const std::string text = encode_manifest(sample_manifest());
  for (size_t length = 0; length < text.size(); ++length) {
    ASSERT_FALSE(parse_manifest(text.substr(0, length), kPath).is_ok()) << length;
  }
}

TEST(Manifest, HashLineProblemsAreNamed) {
  const std::string text = encode_manifest(sample_manifest());
  const std::string body = text.substr(0, text.rfind("xxh3:"));
  EXPECT_EQ(parse_manifest(body, kPath)
                .status()
                .message()
                .rfind(std::string(kPath) + ": the last line is not 'xxh3:", 0),
            0u);
  // Uppercase hex digits are refused: each hash has exactly one spelling.
  const std::string line = hash_line(body);
  std::string upper = line;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  upper.replace(0, 5, "xxh3:");
  if (upper != line) {
    EXPECT_FALSE(parse_manifest(body + upper, kPath).is_ok());
  }
  std::string edited_body = body;
  edited_body[edited_body.find("run-abc")] = 'R';
  const Status status = parse_manifest(edited_body + hash_line(body), kPath).status();
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("hash mismatch"), std::string::npos) << status.message();
}

TEST(Manifest, FieldErrorsNameTheField) {
  struct Case {
    std::string expected;  // a substring of the message
    std::function<void(json&)> edit;
  };
  const std::vector<Case> cases = {
      {"field 'shards[2].file_bytes' is missing",
       [](json& d) { d["shards"][2].erase("file_bytes"); }},
      {"field 'shards[2].file_bytes' must be an integer",
       [](json& d) { d["shards"][2]["file_bytes"] = "4096"; }},
      {"field 'shards[0].file_bytes' must be an integer",
       [](json& d) { d["shards"][0]["file_bytes"] = 4096.5; }},
      {"field 'step' must be an integer in [0, ", [](json& d) { d["step"] = -1; }},
      {"field 'step' must be an integer", [](json& d) { d["step"] = uint64_t{1} << 63; }},
      {"field 'format' is 'frugal', not 'frugal-checkpoint'",
       [](json& d) { d["format"] = "frugal"; }},
      {"field 'version' is 2; this build reads version 1", [](json& d) { d["version"] = 2; }},
      {"field 'run_id' is not a valid run id", [](json& d) { d["run_id"] = "a/b"; }},
      {"field 'world_size' must be an integer", [](json& d) { d["world_size"] = 0; }},
      {"field 'shards' has 3 entries for world_size 4", [](json& d) { d["world_size"] = 4; }},
      {"field 'replicated[1].dtype' unknown dtype 'fp8'; valid: f32, f64",
       [](json& d) { d["replicated"][1]["dtype"] = "fp8"; }},
      {"field 'replicated[0].bytes' is 500, but f32[16, 8] needs 512",
       [](json& d) { d["replicated"][0]["bytes"] = 500; }},
      {"field 'replicated[0].shape[1]' must be an integer",
       [](json& d) { d["replicated"][0]["shape"][1] = -8; }},
      {"field 'replicated[0].shape' has more than 8 dims",
       [](json& d) {
         d["replicated"][0]["shape"] = json::array({1, 1, 1, 1, 1, 1, 1, 1, 1});
       }},
      {"field 'replicated[2].offset' is 760, but packed in order the entry starts at 768",
       [](json& d) { d["replicated"][2]["offset"] = 760; }},
      {"field 'replicated_bytes' is 780, but the entries add up to 776",
       [](json& d) { d["replicated_bytes"] = 780; }},
      {"field 'replicated[1].name' 'param/fc1.weight' appears twice",
       [](json& d) { d["replicated"][1]["name"] = "param/fc1.weight"; }},
      {"field 'shards[1].file' is 'shard-1.bin', not 'shard-00001-of-00003.bin'",
       [](json& d) { d["shards"][1]["file"] = "shard-1.bin"; }},
      {"field 'shards[1].rank' must be an integer in [1, 1]",
       [](json& d) { d["shards"][1]["rank"] = 0; }},
      {"field 'shards[0].footer_hash' must be 16 lowercase hex digits",
       [](json& d) { d["shards"][0]["footer_hash"] = "0123456789ABCDEF"; }},
      {"field 'shards[1].replicated[0]' must be an integer in [512, 512]",
       [](json& d) {
         d["shards"][1]["replicated"] = json::array({500, 768});
       }},
      {"field 'shards[2].replicated[1]' must be an integer in [768, 776]",
       [](json& d) {
         d["shards"][2]["replicated"] = json::array({768, 800});
       }},
      {"field 'shards' replicated ranges end at 770, not at replicated_bytes 776",
       [](json& d) {
         d["shards"][2]["replicated"] = json::array({768, 770});
       }},
      {"field 'shards[1].records[0].data_offset' must be an integer in [256, ",
       [](json& d) { d["shards"][1]["records"][0]["data_offset"] = 100; }},
      {"field 'shards[1].records' must be an array",
       [](json& d) { d["shards"][1]["records"] = 1; }},
      {"field 'shards[1]' must be an object", [](json& d) { d["shards"][1] = 1; }},
      {"field 'meta' must be an object", [](json& d) { d["meta"] = json::array(); }},
      {"field 'meta' is missing", [](json& d) { d.erase("meta"); }},
      {"not a JSON object", [](json& d) { d = json::array(); }},
  };
  for (const Case& c : cases) {
    const Status status = parse_error(c.edit);
    EXPECT_EQ(status.code(), StatusCode::kDataLoss) << c.expected;
    EXPECT_TRUE(status.message().starts_with(std::string(kPath) + ": ")) << status.message();
    EXPECT_NE(status.message().find(c.expected), std::string::npos)
        << "expected '" << c.expected << "' in: " << status.message();
  }
  // The unedited document, re-serialized, still parses: the edits alone cause the failures.
  EXPECT_TRUE(parse_error([](json&) {}).is_ok());
}

TEST(Manifest, InvalidJsonIsDataLoss) {
  const std::string body = "{\"format\": \n";
  const Status status = parse_manifest(body + hash_line(body), kPath).status();
  EXPECT_EQ(status.code(), StatusCode::kDataLoss);
  EXPECT_NE(status.message().find("invalid JSON"), std::string::npos) << status.message();
}

}  // namespace
}  // namespace frugal::ckpt
