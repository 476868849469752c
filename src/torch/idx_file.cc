#include "torch/idx_file.h"

#include <zlib.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

namespace frugal {
namespace {

// The largest array we accept (the biggest IDX dataset, ImageNet-sized, is far below 2^34 bytes);
// guards the dims product against overflow and absurd allocations from a corrupt header.
constexpr int64_t kMaxIdxBytes = int64_t{1} << 34;

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

Status file_error(const std::string& path, const std::string& what) {
  return data_loss("IDX file " + path + ": " + what);
}

// Reads exactly `size` bytes; false on a short read. Sets `error` to zlib's message on a stream
// error (e.g. a CRC mismatch), empty otherwise.
bool read_exactly(gzFile_s* file, void* out, size_t size, std::string& error) {
  auto* p = static_cast<unsigned char*>(out);
  while (size > 0) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size, 1u << 30));
    const int got = gzread(file, p, chunk);
    if (got <= 0) {
      int code = Z_OK;
      const char* message = gzerror(file, &code);
      if (got < 0 || (code != Z_OK && code != Z_BUF_ERROR)) error = message ? message : "zlib";
      return false;
    }
    p += got;
    size -= static_cast<size_t>(got);
  }
  return true;
}

}  // namespace

Result<IdxArray> read_idx_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return not_found("IDX file " + path + " does not exist or is not a regular file");
  }
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) return file_error(path, std::string("cannot open: ") + std::strerror(errno));

  std::string error;
  std::array<unsigned char, 4> magic{};
  if (!read_exactly(file.get(), magic.data(), magic.size(), error)) {
    return file_error(path, error.empty() ? "shorter than the 4-byte magic" : error);
  }
  if (magic[0] != 0 || magic[1] != 0) {
    return file_error(path, "bad magic (first two bytes must be 0; is this an IDX file?)");
  }
  if (magic[2] != 0x08) {
    return file_error(path, "element type 0x" + std::to_string(magic[2]) +
                                " is not supported; valid: 0x08 (unsigned byte)");
  }
  const int ndims = magic[3];
  if (ndims < 1 || ndims > 4) {
    return file_error(path, std::to_string(ndims) + " dimensions; valid: 1 to 4");
  }
  IdxArray array;
  int64_t total = 1;
  for (int d = 0; d < ndims; ++d) {
    std::array<unsigned char, 4> be{};
    if (!read_exactly(file.get(), be.data(), be.size(), error)) {
      return file_error(path, error.empty()
                                  ? "truncated in the header (dimension " + std::to_string(d) + ")"
                                  : error);
    }
    const int64_t dim =
        (int64_t{be[0]} << 24) | (int64_t{be[1]} << 16) | (int64_t{be[2]} << 8) | int64_t{be[3]};
    if (dim == 0 || total > kMaxIdxBytes / dim) {
      return file_error(path, "dimension " + std::to_string(d) + " is " + std::to_string(dim) +
                                  "; the array must have between 1 and 2^34 bytes");
    }
    total *= dim;
    array.dims.push_back(dim);
  }
  array.data.resize(static_cast<size_t>(total));
  if (!read_exactly(file.get(), array.data.data(), array.data.size(), error)) {
    return file_error(path, error.empty() ? "truncated: the header promises " +
                                                std::to_string(total) + " data bytes"
                                          : error);
  }
  unsigned char extra = 0;
  if (read_exactly(file.get(), &extra, 1, error)) {
    return file_error(
        path, "has bytes after the " + std::to_string(total) + " data bytes the header promises");
  }
  if (!error.empty()) return file_error(path, error);
  return array;
}

namespace {

std::string find_split_file(const std::string& dir, const std::string& stem) {
  const std::string gz = dir + "/" + stem + ".gz";
  std::error_code ec;
  if (std::filesystem::exists(gz, ec)) return gz;
  const std::string plain = dir + "/" + stem;
  return std::filesystem::exists(plain, ec) ? plain : gz;
}

}  // namespace

Result<ImageClassificationSplit> load_fashion_mnist(const std::string& dir,
                                                    const std::string& prefix) {
  if (prefix != "train" && prefix != "t10k") {
    return invalid_argument("Fashion-MNIST split '" + prefix + "'; valid: train, t10k");
  }
  const std::string images_path = find_split_file(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_split_file(dir, prefix + "-labels-idx1-ubyte");
  auto images = read_idx_file(images_path);
  if (!images.is_ok()) {
    if (images.status().code() == StatusCode::kNotFound) {
      return not_found(images.status().message() +
                       " (install Debian's dataset-fashion-mnist, or pass --data-dir)");
    }
    return images.status();
  }
  FRUGAL_ASSIGN_OR_RETURN(IdxArray labels, read_idx_file(labels_path));
  if (images->dims.size() != 3) {
    return data_loss("IDX file " + images_path + ": images must be 3-D (count, rows, cols), not " +
                     std::to_string(images->dims.size()) + "-D");
  }
  if (labels.dims.size() != 1) {
    return data_loss("IDX file " + labels_path + ": labels must be 1-D, not " +
                     std::to_string(labels.dims.size()) + "-D");
  }
  if (labels.dims[0] != images->dims[0]) {
    return data_loss("IDX files " + images_path + " and " + labels_path +
                     " disagree: " + std::to_string(images->dims[0]) + " images but " +
                     std::to_string(labels.dims[0]) + " labels");
  }
  ImageClassificationSplit split;
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= split.num_classes) {
      return data_loss("IDX file " + labels_path + ": label " + std::to_string(labels.data[i]) +
                       " at index " + std::to_string(i) + " is not a class 0..9");
    }
  }
  split.count = images->dims[0];
  split.rows = images->dims[1];
  split.cols = images->dims[2];
  split.images = std::move(images->data);
  split.labels = std::move(labels.data);
  return split;
}

}  // namespace frugal
