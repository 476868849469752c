// Helpers for the ckpt/ tests: a fresh temporary directory removed at the end of the test, and
// whole-file reads and writes that bypass the code under test. Test-only; thread-compatible.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

namespace frugal::ckpt::testing {

// mkdtemp under /tmp; removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = "/tmp/frugal-ckpt-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) std::abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::string contents;
  if (FILE* file = std::fopen(path.c_str(), "rb")) {
    char buffer[65536];
    size_t got = 0;
    while ((got = std::fread(buffer, 1, sizeof(buffer), file)) > 0) contents.append(buffer, got);
    std::fclose(file);
  } else {
    ADD_FAILURE() << "cannot read " << path;
  }
  return contents;
}

// Replaces the file by a new one: truncating it in place instead would make ext4 flush it on
// close (its auto_da_alloc heuristic), which costs milliseconds per write in the corruption tests.
inline void write_file(const std::string& path, const std::string& contents) {
  std::remove(path.c_str());
  FILE* file = std::fopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << "cannot write " << path;
  ASSERT_EQ(std::fwrite(contents.data(), 1, contents.size(), file), contents.size());
  ASSERT_EQ(std::fclose(file), 0);
}

}  // namespace frugal::ckpt::testing
