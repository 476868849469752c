// IDX files (the MNIST / Fashion-MNIST container), gzipped or plain, and the Fashion-MNIST splits
// built from them. LibTorch-free so it compiles fast and is testable alone; the torch/ datasets
// turn the bytes into tensors. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

// An IDX array of unsigned bytes (type code 0x08), the only element type the datasets use.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// Reads `path` (gzip or plain; zlib detects which). Every failure is DataLoss or NotFound with the
// file named and what is wrong: missing file, bad magic, an element type other than u8, zero or
// implausible dimensions, a truncated body, trailing bytes, or a corrupt gzip stream.
Result<IdxArray> read_idx_file(const std::string& path);

// One split of Fashion-MNIST: `count` images of rows x cols bytes and their labels (0..9).
struct ImageClassificationSplit {
  int64_t count = 0;
  int64_t rows = 0;
  int64_t cols = 0;
  int num_classes = 10;
  std::vector<uint8_t> images;  // count x rows x cols
  std::vector<uint8_t> labels;  // count
};

// The directory Debian's dataset-fashion-mnist installs.
inline constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Loads `<dir>/<prefix>-images-idx3-ubyte.gz` and `<dir>/<prefix>-labels-idx1-ubyte.gz`, where
// prefix is "train" or "t10k" (the .gz suffix is optional: plain files are found too). Checks
// that images are 3-D, labels 1-D, counts agree and every label is below 10.
Result<ImageClassificationSplit> load_fashion_mnist(const std::string& dir,
                                                    const std::string& prefix);

}  // namespace frugal
