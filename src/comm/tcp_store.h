// Rendezvous stores of the gloo backend: the RendezvousStore interface and TcpStore, a TCP
// key-value store written by hand (gloo ships no TCP store), hosted by rank 0 and shared by a
// communicator and its split() children. TcpStore and TcpStoreServer are thread-safe.
#pragma once

#include <gloo/rendezvous/store.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/status.h"

namespace frugal::detail {

// Limits of the TCP store's wire protocol; larger requests fail with InvalidArgument before
// anything is sent, and a server drops a client that sends a larger frame.
inline constexpr size_t kMaxStoreKeyBytes = 4096;
inline constexpr size_t kMaxStoreValueBytes = 16 << 20;
inline constexpr size_t kMaxStoreKeysPerRequest = 65536;

// A key-value store through which ranks meet: gloo's Store interface (which reports errors only
// by throwing and whose wait may ignore its timeout) plus calls that return Status, are bounded by
// a timeout, and can test for keys without waiting (for naming ranks that never joined).
// Keys are set once; set() on the TCP store overwrites, on gloo's file store it fails.
class RendezvousStore : public gloo::rendezvous::Store {
 public:
  // Frugal's calls: they never throw, and each returns within its timeout.
  virtual Status put(const std::string& key, const std::vector<char>& value) = 0;
  // Waits up to `timeout` for `key` to exist, then returns its value.
  virtual Result<std::vector<char>> fetch(const std::string& key,
                                          std::chrono::milliseconds timeout) = 0;
  // Waits up to `timeout` for all `keys` to exist; DeadlineExceeded names the keys.
  virtual Status wait_for(const std::vector<std::string>& keys,
                          std::chrono::milliseconds timeout) = 0;
  // Whether all `keys` exist now; does not wait for them.
  virtual Result<bool> contains(const std::vector<std::string>& keys) = 0;
  // For error messages: "TCP store at 10.1.2.3:29500", "file store in /tmp/run".
  virtual std::string describe() const = 0;
  // Used by get() and wait(keys), which take no timeout.
  virtual std::chrono::milliseconds default_timeout() const = 0;

  // gloo::rendezvous::Store, for gloo itself (Context::connectFullMesh). Gloo's interface has no
  // error channel but exceptions, so these throw gloo::IoException with the Status message; the
  // gloo backend catches it where it calls into gloo.
  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override;
};

// The server half, run by rank 0: one poll() thread serves any number of clients. A wait request is
// parked until its keys exist; the client bounds the wait and hangs up on timeout, which drops the
// request.
class TcpStoreServer {
 public:
  // Listens on bind_address:port (port 0 picks a free port, see port()) and starts serving.
  // A taken port fails with FailedPrecondition: "port 29500 on 0.0.0.0 is in use (EADDRINUSE):
  // choose another MASTER_PORT".
  static Result<std::unique_ptr<TcpStoreServer>> start(const std::string& bind_address, int port);

  // Stops serving and closes every connection, so that blocked clients get an error at once.
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

  int port() const { return port_; }

 private:
  TcpStoreServer(int listen_fd, int wake_read_fd, int wake_write_fd, int port);
  void serve();

  const int listen_fd_;
  const int wake_read_fd_;  // the destructor writes to wake_write_fd_ to end serve()
  const int wake_write_fd_;
  const int port_;
  std::thread thread_;
};

// The client half. Each request takes an idle connection from a small pool (or opens one), so
// that threads sharing the store do not wait behind each other's blocking waits.
class TcpStore final : public RendezvousStore {
 public:
  // Connects to the server at host:port, retrying while the connection is refused (rank 0 may
  // not be up yet) for up to `timeout`, which is also the default timeout of get() and wait().
  // Fails with "cannot reach MASTER_ADDR 10.1.2.3:29500 after 30000 ms (connection refused)".
  // `server`, if given, lives as long as this store: that is how rank 0 keeps its server up.
  static Result<std::shared_ptr<TcpStore>> connect(const std::string& host, int port,
                                                   std::chrono::milliseconds timeout,
                                                   std::unique_ptr<TcpStoreServer> server = {});
  ~TcpStore() override;

  // The IP address this host uses to reach the server ("10.1.2.7"): the address other hosts can
  // reach this one at.
  const std::string& local_address() const { return local_address_; }

  Status put(const std::string& key, const std::vector<char>& value) override;
  Result<std::vector<char>> fetch(const std::string& key,
                                  std::chrono::milliseconds timeout) override;
  Status wait_for(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) override;
  Result<bool> contains(const std::vector<std::string>& keys) override;
  std::string describe() const override;
  std::chrono::milliseconds default_timeout() const override { return timeout_; }

 private:
  struct Reply;
  TcpStore(std::string host, int port, std::chrono::milliseconds timeout,
           std::unique_ptr<TcpStoreServer> server, int first_fd, std::string local_address);

  // Sends one request frame and reads its reply, all within `timeout`.
  Result<Reply> round_trip(const std::string& request, std::chrono::milliseconds timeout,
                           std::string_view what);
  Result<int> acquire_connection(std::chrono::milliseconds timeout);
  void release_connection(int fd);

  // Declared first so it is destroyed last, after every client connection is closed.
  std::unique_ptr<TcpStoreServer> server_;
  const std::string host_;
  const int port_;
  const std::chrono::milliseconds timeout_;
  const std::string local_address_;
  std::mutex mutex_;
  std::vector<int> idle_fds_;  // guarded by mutex_
};

}  // namespace frugal::detail
