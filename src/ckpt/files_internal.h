// POSIX file-descriptor helpers shared by files.cc and shard_file.cc. Internal to ckpt/. Every
// error names the path and strerror. Thread-compatible: a UniqueFd is owned by one thread.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::ckpt {

// "<path>: <what>: <strerror(error)>"; NotFound for ENOENT/ENOTDIR, Unavailable otherwise (the
// disk or filesystem failed: ENOSPC, EIO, EACCES...).
Status errno_status(const std::string& path, std::string_view what, int error);

// Owns a file descriptor; closes it on destruction (errors ignored: call close() to see them).
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();

  int get() const { return fd_; }
  int release();
  // close(2), reporting its error: on NFS and some filesystems a failed write surfaces here.
  Status close(const std::string& path);

 private:
  int fd_ = -1;
};

// open(2) with O_CLOEXEC added.
Result<UniqueFd> open_file(const std::string& path, int flags, mode_t mode = 0644);
// Writes all of `data`, looping on short writes and EINTR.
Status write_all(int fd, ConstBytes data, const std::string& path);
// Reads up to out.size() bytes at `offset`, looping on short reads and EINTR; returns how many
// were read (fewer only at end of file).
Result<size_t> pread_all(int fd, int64_t offset, MutableBytes out, const std::string& path);
Status fsync_file(int fd, const std::string& path);
Result<int64_t> file_size(int fd, const std::string& path);

}  // namespace frugal::ckpt
