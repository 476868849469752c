#include "engine/gathered_trace.h"

#include <cstdint>
#include <span>
#include <vector>

namespace frugal {

Status write_gathered_trace(Communicator& comm, const Timeline& timeline, const std::string& path) {
  const std::string mine = timeline.to_json();
  std::vector<uint64_t> sizes(static_cast<size_t>(comm.size()));
  const uint64_t my_size = mine.size();
  FRUGAL_RETURN_IF_ERROR(
      comm.allgather(std::as_bytes(std::span<const uint64_t>(&my_size, 1)), bytes_of(sizes)));
  std::vector<size_t> counts(sizes.begin(), sizes.end());
  size_t total = 0;
  for (size_t c : counts) total += c;
  std::string all(total, '\0');
  FRUGAL_RETURN_IF_ERROR(comm.allgatherv(std::as_bytes(std::span(mine)), counts,
                                         std::as_writable_bytes(std::span(all))));
  if (comm.rank() != 0) return Status::ok();
  std::vector<std::string> arrays;
  size_t offset = 0;
  for (size_t c : counts) {
    arrays.push_back(all.substr(offset, c));
    offset += c;
  }
  return write_chrome_trace(path, arrays).with_context("writing the trace " + path);
}

}  // namespace frugal
