#include "ckpt/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "ckpt/files_internal.h"

namespace frugal::ckpt {
namespace {

constexpr std::string_view kStepPrefix = "step-";
constexpr std::string_view kTmpInfix = ".tmp-";

bool all_digits(std::string_view text) {
  return !text.empty() &&
         std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// The directory holding `path` ("." for a bare name), whose fsync makes an entry in it durable.
std::string parent_directory(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  if (slash == 0) return "/";
  return std::string(path.substr(0, slash));
}

Status error_code_status(const std::string& path, std::string_view what,
                         const std::error_code& error) {
  return error.category() == std::generic_category() || error.category() == std::system_category()
             ? errno_status(path, what, error.value())
             : unavailable(path + ": " + std::string(what) + ": " + error.message());
}

// mkdir of one directory; true if it was created, false if a directory was already there.
Result<bool> make_one_directory(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) return true;
  const int error = errno;
  struct stat st {};
  if (error == EEXIST && ::stat(dir.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return false;
    return failed_precondition(dir + ": exists and is not a directory");
  }
  return errno_status(dir, "cannot create directory", error);
}

}  // namespace

Status errno_status(const std::string& path, std::string_view what, int error) {
  std::string message = path + ": " + std::string(what) + ": " + std::strerror(error);
  if (error == ENOENT || error == ENOTDIR) return not_found(std::move(message));
  return unavailable(std::move(message));
}

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

int UniqueFd::release() {
  const int fd = fd_;
  fd_ = -1;
  return fd;
}

Status UniqueFd::close(const std::string& path) {
  // Linux releases the descriptor even when close fails, so it is never retried (EINTR
  // included: a retry could close a descriptor another thread just opened).
  if (::close(release()) != 0) return errno_status(path, "close failed", errno);
  return Status::ok();
}

Result<UniqueFd> open_file(const std::string& path, int flags, mode_t mode) {
  int fd = -1;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return errno_status(path, "cannot open", errno);
  return UniqueFd(fd);
}

Status write_all(int fd, ConstBytes data, const std::string& path) {
  while (!data.empty()) {
    const ssize_t written = ::write(fd, data.data(), data.size());
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno_status(path, "write failed", errno);
    }
    data = data.subspan(static_cast<size_t>(written));
  }
  return Status::ok();
}

Result<size_t> pread_all(int fd, int64_t offset, MutableBytes out, const std::string& path) {
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t got = ::pread(fd, out.data() + done, out.size() - done,
                                static_cast<off_t>(offset + static_cast<int64_t>(done)));
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno_status(path, "read failed at byte offset " + std::to_string(offset + done),
                          errno);
    }
    if (got == 0) break;  // end of file
    done += static_cast<size_t>(got);
  }
  return done;
}

Status fsync_file(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return errno_status(path, "fsync failed", errno);
  return Status::ok();
}

Result<int64_t> file_size(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_status(path, "fstat failed", errno);
  return static_cast<int64_t>(st.st_size);
}

std::string step_dir_name(int64_t step) {
  char name[40];
  std::snprintf(name, sizeof(name), "step-%09lld", static_cast<long long>(step));
  return name;
}

std::string tmp_step_dir_name(int64_t step, std::string_view run_id) {
  return step_dir_name(step) + std::string(kTmpInfix) + std::string(run_id);
}

std::string shard_file_name(int rank, int world) {
  char name[64];
  std::snprintf(name, sizeof(name), "shard-%05d-of-%05d.bin", rank, world);
  return name;
}

std::optional<int64_t> parse_step_dir_name(std::string_view name) {
  if (!name.starts_with(kStepPrefix)) return std::nullopt;
  const std::string_view digits = name.substr(kStepPrefix.size());
  if (!all_digits(digits)) return std::nullopt;
  int64_t step = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

bool is_tmp_step_dir_name(std::string_view name) {
  const size_t infix = name.find(kTmpInfix);
  return infix != std::string_view::npos && name.size() > infix + kTmpInfix.size() &&
         parse_step_dir_name(name.substr(0, infix)).has_value();
}

std::string join_path(std::string_view dir, std::string_view name) {
  std::string path(dir);
  if (!path.empty() && path.back() != '/') path += '/';
  return path + std::string(name);
}

std::string base_name(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  const size_t slash = path.rfind('/');
  return std::string(slash == std::string_view::npos ? path : path.substr(slash + 1));
}

Status write_file_atomically(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  FRUGAL_ASSIGN_OR_RETURN(UniqueFd fd, open_file(tmp, O_WRONLY | O_CREAT | O_TRUNC));
  FRUGAL_RETURN_IF_ERROR(write_all(
      fd.get(), {reinterpret_cast<const std::byte*>(contents.data()), contents.size()}, tmp));
  FRUGAL_RETURN_IF_ERROR(fsync_file(fd.get(), tmp));
  FRUGAL_RETURN_IF_ERROR(fd.close(tmp));
  return rename_durably(tmp, path);
}

Result<std::string> read_small_file(const std::string& path, int64_t max_bytes) {
  FRUGAL_ASSIGN_OR_RETURN(UniqueFd fd, open_file(path, O_RDONLY));
  std::string contents;
  // Read to end of file rather than trusting the size: the file may be growing or special.
  constexpr size_t kBlock = 64 << 10;
  while (true) {
    const size_t old_size = contents.size();
    contents.resize(old_size + kBlock);
    FRUGAL_ASSIGN_OR_RETURN(
        size_t got,
        pread_all(fd.get(), static_cast<int64_t>(old_size),
                  {reinterpret_cast<std::byte*>(contents.data()) + old_size, kBlock}, path));
    contents.resize(old_size + got);
    if (static_cast<int64_t>(contents.size()) > max_bytes) {
      return out_of_range(path + ": larger than the " + std::to_string(max_bytes) +
                          "-byte limit for this file");
    }
    if (got < kBlock) return contents;
  }
}

Status fsync_directory(const std::string& dir) {
  FRUGAL_ASSIGN_OR_RETURN(UniqueFd fd, open_file(dir, O_RDONLY | O_DIRECTORY));
  FRUGAL_RETURN_IF_ERROR(fsync_file(fd.get(), dir));
  return fd.close(dir);
}

Status rename_durably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    return errno_status(from, "cannot rename to " + to, errno);
  }
  const std::string to_parent = parent_directory(to);
  FRUGAL_RETURN_IF_ERROR(fsync_directory(to_parent));
  // A move between directories also changes the source directory.
  const std::string from_parent = parent_directory(from);
  if (from_parent != to_parent) FRUGAL_RETURN_IF_ERROR(fsync_directory(from_parent));
  return Status::ok();
}

Status make_directories(const std::string& dir) {
  std::string prefix;
  size_t begin = 0;
  if (dir.starts_with('/')) {
    prefix = "/";
    begin = 1;
  }
  while (begin < dir.size()) {
    const size_t end = std::min(dir.find('/', begin), dir.size());
    const std::string_view component = std::string_view(dir).substr(begin, end - begin);
    begin = end + 1;
    if (component.empty() || component == ".") continue;
    if (!prefix.empty() && prefix.back() != '/') prefix += '/';
    prefix += component;
    if (component == "..") continue;
    FRUGAL_ASSIGN_OR_RETURN(bool created, make_one_directory(prefix));
    if (created) FRUGAL_RETURN_IF_ERROR(fsync_directory(parent_directory(prefix)));
  }
  return Status::ok();
}

Status remove_tree(const std::string& path) {
  std::error_code error;
  std::filesystem::remove_all(path, error);
  if (error) return error_code_status(path, "cannot remove", error);
  return Status::ok();
}

Result<std::vector<std::string>> list_directory(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code error;
  for (std::filesystem::directory_iterator it(dir, error);
       !error && it != std::filesystem::directory_iterator(); it.increment(error)) {
    names.push_back(it->path().filename().string());
  }
  if (error) return error_code_status(dir, "cannot list directory", error);
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace frugal::ckpt
