#include "comm/tcp_store.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <gloo/common/error.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "comm/testing/rank_runner.h"
#include "core/clock.h"

namespace frugal::detail {
namespace {

using std::chrono::milliseconds;

std::vector<char> bytes(std::string_view text) { return {text.begin(), text.end()}; }

double elapsed_ms(SteadyClock::time_point start) { return seconds_since(start) * 1000.0; }

std::unique_ptr<TcpStoreServer> start_server() {
  auto server = TcpStoreServer::start("127.0.0.1", 0);
  EXPECT_TRUE(server.is_ok()) << server.status().to_string();
  return server.is_ok() ? std::move(server).value() : nullptr;
}

std::shared_ptr<TcpStore> connect_to(int port, milliseconds timeout = milliseconds(5000)) {
  auto store = TcpStore::connect("127.0.0.1", port, timeout);
  EXPECT_TRUE(store.is_ok()) << store.status().to_string();
  return store.is_ok() ? std::move(store).value() : nullptr;
}

TEST(TcpStore, SetGetAndWaitAcrossManyClientThreads) {
  auto server = start_server();
  ASSERT_TRUE(server);
  constexpr int kClients = 16;
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto store = connect_to(server->port());
      ASSERT_TRUE(store);
      EXPECT_EQ(store->local_address(), "127.0.0.1");
      ASSERT_TRUE(
          store->put("key" + std::to_string(i), bytes("value" + std::to_string(i))).is_ok());
      std::vector<std::string> keys;
      for (int k = 0; k < kClients; ++k) keys.push_back("key" + std::to_string(k));
      // Every client waits for every other client's key: the server must hold all these waits.
      ASSERT_TRUE(store->wait_for(keys, milliseconds(5000)).is_ok());
      for (int k = 0; k < kClients; ++k) {
        auto value = store->fetch("key" + std::to_string(k), milliseconds(1000));
        ASSERT_TRUE(value.is_ok()) << value.status().to_string();
        EXPECT_EQ(*value, bytes("value" + std::to_string(k)));
      }
      auto present = store->contains(keys);
      ASSERT_TRUE(present.is_ok());
      EXPECT_TRUE(*present);
    });
  }
  for (auto& thread : threads) thread.join();
}

TEST(TcpStore, SetOverwritesAndContainsDoesNotWait) {
  auto server = start_server();
  ASSERT_TRUE(server);
  auto store = connect_to(server->port());
  ASSERT_TRUE(store);
  auto absent = store->contains({"a"});
  ASSERT_TRUE(absent.is_ok());
  EXPECT_FALSE(*absent);
  ASSERT_TRUE(store->put("a", bytes("1")).is_ok());
  ASSERT_TRUE(store->put("a", bytes("22")).is_ok());
  ASSERT_TRUE(store->put("empty", {}).is_ok());
  EXPECT_EQ(store->fetch("a", milliseconds(100)).value(), bytes("22"));
  EXPECT_TRUE(store->fetch("empty", milliseconds(100)).value().empty());
  auto partly = store->contains({"a", "b"});
  ASSERT_TRUE(partly.is_ok());
  EXPECT_FALSE(*partly);
}

TEST(TcpStore, WaitTimesOutWithDeadlineExceededAndStoreStaysUsable) {
  auto server = start_server();
  ASSERT_TRUE(server);
  auto store = connect_to(server->port());
  ASSERT_TRUE(store);
  const auto start = SteadyClock::now();
  const Status status = store->wait_for({"never-set"}, milliseconds(200));
  EXPECT_EQ(status.code(), StatusCode::kDeadlineExceeded) << status.to_string();
  EXPECT_NE(status.message().find("'never-set'"), std::string::npos) << status.message();
  EXPECT_GE(elapsed_ms(start), 190.0);
  EXPECT_LT(elapsed_ms(start), 2000.0);

  auto missing = store->fetch("never-set", milliseconds(100));
  EXPECT_EQ(missing.status().code(), StatusCode::kDeadlineExceeded);

  // The timed-out connection was dropped; new requests use a fresh one.
  ASSERT_TRUE(store->put("later", bytes("x")).is_ok());
  EXPECT_EQ(store->fetch("later", milliseconds(100)).value(), bytes("x"));
}

TEST(TcpStore, WaitIsReleasedBySetFromAnotherClient) {
  auto server = start_server();
  ASSERT_TRUE(server);
  auto waiter = connect_to(server->port());
  auto setter = connect_to(server->port());
  ASSERT_TRUE(waiter && setter);
  std::thread later([&] {
    std::this_thread::sleep_for(milliseconds(100));
    EXPECT_TRUE(setter->put("go", bytes("now")).is_ok());
  });
  const auto start = SteadyClock::now();
  auto value = waiter->fetch("go", milliseconds(5000));
  later.join();
  ASSERT_TRUE(value.is_ok()) << value.status().to_string();
  EXPECT_EQ(*value, bytes("now"));
  EXPECT_LT(elapsed_ms(start), 2000.0);
}

TEST(TcpStore, PortInUseIsAClearError) {
  auto first = start_server();
  ASSERT_TRUE(first);
  auto second = TcpStoreServer::start("0.0.0.0", first->port());
  ASSERT_FALSE(second.is_ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  const std::string expected = "port " + std::to_string(first->port()) +
                               " on 0.0.0.0 is in use (EADDRINUSE): choose another MASTER_PORT";
  EXPECT_EQ(second.status().message(), expected);
}

TEST(TcpStore, UnreachableMasterFailsWithinTheTimeout) {
  const int port = testing::unused_loopback_port();
  const auto start = SteadyClock::now();
  auto store = TcpStore::connect("127.0.0.1", port, milliseconds(300));
  ASSERT_FALSE(store.is_ok());
  EXPECT_EQ(store.status().code(), StatusCode::kUnavailable);
  const std::string expected = "cannot reach MASTER_ADDR 127.0.0.1:" + std::to_string(port) +
                               " after 300 ms (connection refused)";
  EXPECT_EQ(store.status().message().rfind(expected, 0), 0u) << store.status().message();
  EXPECT_GE(elapsed_ms(start), 250.0);  // it kept retrying: rank 0 may start late
  EXPECT_LT(elapsed_ms(start), 2000.0);
}

TEST(TcpStore, ClientRetriesUntilTheServerStarts) {
  const int port = testing::unused_loopback_port();
  std::unique_ptr<TcpStoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(milliseconds(200));
    auto started = TcpStoreServer::start("127.0.0.1", port);
    ASSERT_TRUE(started.is_ok()) << started.status().to_string();
    server = std::move(started).value();
  });
  auto store = TcpStore::connect("127.0.0.1", port, milliseconds(5000));
  starter.join();
  ASSERT_TRUE(store.is_ok()) << store.status().to_string();
  EXPECT_TRUE((*store)->put("k", bytes("v")).is_ok());
}

TEST(TcpStore, ServerShutdownWakesWaitingClientsWithAnError) {
  auto server = start_server();
  ASSERT_TRUE(server);
  const int port = server->port();
  constexpr int kWaiters = 4;
  std::vector<std::shared_ptr<TcpStore>> stores;
  for (int i = 0; i < kWaiters; ++i) stores.push_back(connect_to(port));
  std::vector<Status> results(kWaiters);
  std::vector<double> waited_ms(kWaiters);
  std::vector<std::thread> threads;
  for (int i = 0; i < kWaiters; ++i) {
    threads.emplace_back([&, i] {
      const auto start = SteadyClock::now();
      results[i] = stores[i]->wait_for({"never"}, milliseconds(10000));
      waited_ms[i] = elapsed_ms(start);
    });
  }
  std::this_thread::sleep_for(milliseconds(200));
  const auto shutdown_start = SteadyClock::now();
  server.reset();
  EXPECT_LT(elapsed_ms(shutdown_start), 1000.0);  // no hang in the destructor
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kWaiters; ++i) {
    EXPECT_EQ(results[i].code(), StatusCode::kUnavailable) << results[i].to_string();
    EXPECT_NE(results[i].message().find("lost connection to the TCP store"), std::string::npos)
        << results[i].message();
    EXPECT_LT(waited_ms[i], 2000.0);
  }
  // With the server gone, requests fail at once instead of waiting out their timeout.
  const auto start = SteadyClock::now();
  const Status later = stores[0]->put("k", bytes("v"));
  EXPECT_EQ(later.code(), StatusCode::kUnavailable) << later.to_string();
  EXPECT_LT(elapsed_ms(start), 1000.0);
}

TEST(TcpStore, OversizedRequestsAreRefusedBeforeSending) {
  auto server = start_server();
  ASSERT_TRUE(server);
  auto store = connect_to(server->port());
  ASSERT_TRUE(store);
  EXPECT_EQ(store->put(std::string(kMaxStoreKeyBytes + 1, 'k'), bytes("v")).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->put("big", std::vector<char>(kMaxStoreValueBytes + 1)).code(),
            StatusCode::kInvalidArgument);
  std::vector<char> large(1 << 20);
  for (size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(store->put("large", large).is_ok());
  EXPECT_EQ(store->fetch("large", milliseconds(1000)).value(), large);
}

TEST(TcpStore, MalformedClientIsDroppedWithoutHurtingOthers) {
  auto server = start_server();
  ASSERT_TRUE(server);
  // A frame header announcing 1 GiB: the server must refuse it, not allocate it.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(server->port()));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  timeval five_seconds{5, 0};  // a server that never hangs up fails the test instead of hanging it
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &five_seconds, sizeof(five_seconds));
  const uint32_t huge = htonl(1u << 30);
  ASSERT_EQ(::send(fd, &huge, sizeof(huge), MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(huge)));
  char buffer[256];
  ssize_t total = 0;
  for (ssize_t n; (n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0;) total += n;
  EXPECT_GT(total, 5);  // a bad-request reply, then the server hung up
  ::close(fd);

  auto store = connect_to(server->port());
  ASSERT_TRUE(store);
  EXPECT_TRUE(store->put("still", bytes("fine")).is_ok());
}

TEST(TcpStore, GlooInterfaceThrowsIoExceptionOnTimeout) {
  auto server = start_server();
  ASSERT_TRUE(server);
  auto store = connect_to(server->port(), milliseconds(200));
  ASSERT_TRUE(store);
  gloo::rendezvous::Store& gloo_store = *store;
  gloo_store.set("k", bytes("v"));
  EXPECT_EQ(gloo_store.get("k"), bytes("v"));
  EXPECT_THROW(gloo_store.wait({"missing"}, milliseconds(100)), gloo::IoException);
  EXPECT_THROW(gloo_store.get("missing"), gloo::IoException);  // default timeout: 200 ms
}

}  // namespace
}  // namespace frugal::detail
