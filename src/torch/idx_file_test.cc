#include "torch/idx_file.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

namespace frugal {
namespace {

namespace fs = std::filesystem;

class IdxFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("frugal_idx_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The bytes of an IDX u8 file with these dims; body bytes are i * 7 mod 251 (or `body`).
  static std::vector<uint8_t> idx_bytes(const std::vector<uint32_t>& dims,
                                        std::vector<uint8_t> body = {}, int type = 0x08) {
    std::vector<uint8_t> bytes = {0, 0, static_cast<uint8_t>(type),
                                  static_cast<uint8_t>(dims.size())};
    size_t total = 1;
    for (uint32_t d : dims) {
      for (int shift : {24, 16, 8, 0}) bytes.push_back(static_cast<uint8_t>(d >> shift));
      total *= d;
    }
    if (body.empty()) {
      for (size_t i = 0; i < total; ++i) body.push_back(static_cast<uint8_t>(i * 7 % 251));
    }
    bytes.insert(bytes.end(), body.begin(), body.end());
    return bytes;
  }

  std::string write_gz(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    gzFile f = gzopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr);
    EXPECT_EQ(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())),
              static_cast<int>(bytes.size()));
    gzclose(f);
    return path;
  }

  std::string write_plain(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = (dir_ / name).string();
    std::ofstream(path, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  static void expect_error(const Result<IdxArray>& result, const std::string& path,
                           const std::string& what) {
    ASSERT_FALSE(result.is_ok()) << path;
    EXPECT_EQ(result.status().code(), StatusCode::kDataLoss) << result.status().to_string();
    EXPECT_NE(result.status().message().find(path), std::string::npos) << result.status().message();
    EXPECT_NE(result.status().message().find(what), std::string::npos) << result.status().message();
  }

  fs::path dir_;
};

TEST_F(IdxFileTest, ReadsGzippedAndPlainFiles) {
  const auto bytes = idx_bytes({3, 4, 5});
  for (const std::string& path : {write_gz("a.gz", bytes), write_plain("a", bytes)}) {
    auto array = read_idx_file(path);
    ASSERT_TRUE(array.is_ok()) << array.status().to_string();
    EXPECT_EQ(array->dims, (std::vector<int64_t>{3, 4, 5}));
    ASSERT_EQ(array->data.size(), 60u);
    for (size_t i = 0; i < 60; ++i) EXPECT_EQ(array->data[i], i * 7 % 251);
  }
}

TEST_F(IdxFileTest, RejectsBrokenFilesNamingThemAndTheProblem) {
  auto bytes = idx_bytes({3, 4, 5});
  auto truncated = bytes;
  truncated.resize(truncated.size() - 1);
  std::string path = write_gz("truncated.gz", truncated);
  expect_error(read_idx_file(path), path, "truncated");

  auto trailing = bytes;
  trailing.push_back(1);
  path = write_gz("trailing.gz", trailing);
  expect_error(read_idx_file(path), path, "bytes after");

  auto bad_magic = bytes;
  bad_magic[0] = 0x1f;
  path = write_gz("magic.gz", bad_magic);
  expect_error(read_idx_file(path), path, "magic");

  path = write_gz("type.gz", idx_bytes({3}, {1, 2, 3}, 0x0D));
  expect_error(read_idx_file(path), path, "element type");

  path = write_gz("zero.gz", idx_bytes({3, 0}, {1}));
  expect_error(read_idx_file(path), path, "dimension 1 is 0");

  path = write_gz("huge.gz", idx_bytes({0xFFFFFFFF, 0xFFFFFFFF}, {1}));
  expect_error(read_idx_file(path), path, "2^34");

  path = write_gz("header.gz", {0, 0, 8, 3, 0, 0});
  expect_error(read_idx_file(path), path, "header");

  path = write_plain("empty", {});
  expect_error(read_idx_file(path), path, "magic");

  auto missing = read_idx_file((dir_ / "missing.gz").string());
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST_F(IdxFileTest, DetectsACorruptGzipStream) {
  std::vector<uint8_t> body(20000);
  for (size_t i = 0; i < body.size(); ++i) body[i] = static_cast<uint8_t>((i * i) % 253);
  const std::string path = write_gz("corrupt.gz", idx_bytes({100, 200}, body));
  std::vector<char> compressed;
  {
    std::ifstream in(path, std::ios::binary);
    compressed.assign(std::istreambuf_iterator<char>(in), {});
  }
  // Flip bytes of the deflate body and, separately, of the CRC in the trailer.
  for (size_t offset : {compressed.size() / 2, compressed.size() - 6}) {
    auto damaged = compressed;
    damaged[offset] = static_cast<char>(damaged[offset] ^ 0x5A);
    std::ofstream(path, std::ios::binary)
        .write(damaged.data(), static_cast<std::streamsize>(damaged.size()));
    auto result = read_idx_file(path);
    ASSERT_FALSE(result.is_ok()) << "damage at " << offset << " went unnoticed";
    EXPECT_EQ(result.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(result.status().message().find(path), std::string::npos);
  }
}

TEST_F(IdxFileTest, FashionMnistSplitChecksShapesCountsAndLabels) {
  write_gz("train-images-idx3-ubyte.gz", idx_bytes({6, 2, 3}));
  write_gz("train-labels-idx1-ubyte.gz", idx_bytes({6}, {0, 1, 2, 3, 9, 5}));
  auto split = load_fashion_mnist(dir_.string(), "train");
  ASSERT_TRUE(split.is_ok()) << split.status().to_string();
  EXPECT_EQ(split->count, 6);
  EXPECT_EQ(split->rows, 2);
  EXPECT_EQ(split->cols, 3);
  EXPECT_EQ(split->labels, (std::vector<uint8_t>{0, 1, 2, 3, 9, 5}));

  write_gz("train-labels-idx1-ubyte.gz", idx_bytes({6}, {0, 1, 2, 10, 9, 5}));
  auto bad_label = load_fashion_mnist(dir_.string(), "train");
  ASSERT_FALSE(bad_label.is_ok());
  EXPECT_NE(bad_label.status().message().find("label 10 at index 3"), std::string::npos);

  write_gz("train-labels-idx1-ubyte.gz", idx_bytes({5}, {0, 1, 2, 3, 4}));
  auto mismatch = load_fashion_mnist(dir_.string(), "train");
  ASSERT_FALSE(mismatch.is_ok());
  EXPECT_NE(mismatch.status().message().find("6 images but 5 labels"), std::string::npos);

  auto missing = load_fashion_mnist(dir_.string(), "t10k");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("--data-dir"), std::string::npos);
  EXPECT_FALSE(load_fashion_mnist(dir_.string(), "test").is_ok());
}

// Debian's dataset-fashion-mnist, which scripts/setup installs: 60000 + 10000 28x28 images and
// 6000 + 1000 of each class (the published balance).
TEST(FashionMnistTest, DebianPackageLoads) {
  if (!fs::exists(kDefaultFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist not installed";
  for (const auto& [prefix, count] : {std::pair<std::string, int64_t>{"train", 60000},
                                      std::pair<std::string, int64_t>{"t10k", 10000}}) {
    auto split = load_fashion_mnist(kDefaultFashionMnistDir, prefix);
    ASSERT_TRUE(split.is_ok()) << split.status().to_string();
    EXPECT_EQ(split->count, count);
    EXPECT_EQ(split->rows, 28);
    EXPECT_EQ(split->cols, 28);
    std::vector<int64_t> per_class(10, 0);
    for (uint8_t label : split->labels) ++per_class[label];
    for (int64_t n : per_class) EXPECT_EQ(n, count / 10);
  }
}

}  // namespace
}  // namespace frugal
