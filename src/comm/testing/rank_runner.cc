#include "comm/testing/rank_runner.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "comm/factory.h"

namespace frugal::testing {

int unused_loopback_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t size = sizeof(address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size);
  ::close(fd);
  return ntohs(address.sin_port);
}

std::string make_temp_dir(const std::string& prefix) {
  std::string pattern = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (mkdtemp(pattern.data()) == nullptr) return {};
  return pattern;
}

void run_in_process_ranks(const std::string& backend, int world_size, int64_t timeout_ms,
                          const std::function<void(Communicator&)>& body) {
  std::vector<std::unique_ptr<Communicator>> comms(world_size);
  std::string store_dir;
  if (backend == "local") {
    auto group = make_local_group(world_size, timeout_ms);
    ASSERT_TRUE(group.is_ok()) << group.status().to_string();
    comms = std::move(group).value();
  } else {
    // Every rank joins from its own thread, as separate processes would.
    store_dir = make_temp_dir("frugal-test-store");
    ASSERT_FALSE(store_dir.empty());
    std::vector<Status> errors(world_size);
    std::vector<std::thread> joiners;
    for (int r = 0; r < world_size; ++r) {
      joiners.emplace_back([&, r] {
        CommConfig config;
        config.backend = backend;
        config.rank = r;
        config.world_size = world_size;
        config.store_path = store_dir;
        config.hostname = "127.0.0.1";
        config.timeout_ms = timeout_ms;
        auto made = make_communicator(config);
        if (made.is_ok()) {
          comms[r] = std::move(made).value();
        } else {
          errors[r] = made.status();
        }
      });
    }
    for (auto& t : joiners) t.join();
    for (int r = 0; r < world_size; ++r) {
      ASSERT_TRUE(errors[r].is_ok()) << "rank " << r << ": " << errors[r].to_string();
    }
  }
  std::vector<std::thread> ranks;
  for (int r = 0; r < world_size; ++r) {
    ranks.emplace_back([&, r] { body(*comms[r]); });
  }
  for (auto& t : ranks) t.join();
  comms.clear();
  if (!store_dir.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(store_dir, ignored);
  }
}

}  // namespace frugal::testing
