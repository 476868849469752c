#include "comm/tcp_store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gloo/common/error.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <climits>
#include <cstring>
#include <list>
#include <unordered_map>

#include "core/clock.h"

namespace frugal::detail {
namespace {

using std::chrono::milliseconds;

// Wire protocol. Every message is a frame: a 4-byte big-endian body length, then the body.
// Request body: opcode byte, then the operands; strings are a 4-byte length and the bytes.
//   kSet key value | kGet key | kCheck count key... | kWait count key...
// Reply body: a ReplyCode byte, then kGet: the value; kCheck: one byte 0/1; kBadRequest: a message.
enum class Opcode : uint8_t { kSet = 1, kGet = 2, kCheck = 3, kWait = 4 };
enum class ReplyCode : uint8_t { kOk = 0, kNotFound = 1, kBadRequest = 2 };

constexpr size_t kFrameHeaderBytes = 4;
constexpr size_t kMaxFrameBytes = 64 << 20;
constexpr size_t kMaxIdleConnections = 16;

class Deadline {
 public:
  explicit Deadline(milliseconds timeout) : at_(SteadyClock::now() + timeout) {}
  // Milliseconds left, rounded up so that a nearly expired deadline still polls once.
  int remaining_ms() const {
    const auto left = at_ - SteadyClock::now();
    if (left <= SteadyClock::duration::zero()) return 0;
    return static_cast<int>(
        std::min<int64_t>(std::chrono::ceil<milliseconds>(left).count(), INT_MAX));
  }
  bool expired() const { return SteadyClock::now() >= at_; }

 private:
  SteadyClock::time_point at_;
};

// "connection refused": strerror, lower-cased to read well inside a sentence.
std::string errno_text(int error) {
  std::string text = std::strerror(error);
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

std::string endpoint_text(const std::string& host, int port) {
  const bool ipv6 = host.find(':') != std::string::npos;
  return (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string keys_text(const std::vector<std::string>& keys) {
  constexpr size_t kMaxShown = 8;
  std::string text;
  for (size_t i = 0; i < keys.size() && i < kMaxShown; ++i) {
    text += (i ? ", '" : "'") + keys[i] + "'";
  }
  if (keys.size() > kMaxShown) text += " and " + std::to_string(keys.size() - kMaxShown) + " more";
  return text;
}

void close_fd(int fd) {
  if (fd >= 0) ::close(fd);
}

// Waits until `fd` is ready for `events` or the deadline passes.
Status poll_one(int fd, short events, const Deadline& deadline) {
  for (;;) {
    pollfd entry{fd, events, 0};
    const int ready = ::poll(&entry, 1, deadline.remaining_ms());
    if (ready > 0) return Status::ok();  // readable, writable, or an error the next call reports
    if (ready == 0) return deadline_exceeded("timed out");
    if (errno != EINTR) return unavailable("poll: " + errno_text(errno));
  }
}

Status send_all(int fd, std::string_view data, const Deadline& deadline) {
  size_t sent = 0;
  while (sent < data.size()) {
    FRUGAL_RETURN_IF_ERROR(poll_one(fd, POLLOUT, deadline));
    const ssize_t n =
        ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return unavailable(errno_text(errno));
    }
  }
  return Status::ok();
}

Status recv_exact(int fd, char* data, size_t size, const Deadline& deadline) {
  size_t received = 0;
  while (received < size) {
    FRUGAL_RETURN_IF_ERROR(poll_one(fd, POLLIN, deadline));
    const ssize_t n = ::recv(fd, data + received, size - received, MSG_DONTWAIT);
    if (n > 0) {
      received += static_cast<size_t>(n);
    } else if (n == 0) {
      return unavailable("the server closed the connection");
    } else if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) {
      return unavailable(errno_text(errno));
    }
  }
  return Status::ok();
}

void put_u32(std::string& out, uint32_t value) {
  const uint32_t big_endian = htonl(value);
  out.append(reinterpret_cast<const char*>(&big_endian), sizeof(big_endian));
}

void put_bytes(std::string& out, std::string_view bytes) {
  put_u32(out, static_cast<uint32_t>(bytes.size()));
  out.append(bytes);
}

// Prepends the frame header to a finished body.
std::string frame(std::string body) {
  std::string out;
  out.reserve(kFrameHeaderBytes + body.size());
  put_u32(out, static_cast<uint32_t>(body.size()));
  out += body;
  return out;
}

uint32_t read_u32(const char* data) {
  uint32_t big_endian;
  std::memcpy(&big_endian, data, sizeof(big_endian));
  return ntohl(big_endian);
}

// Reads operands from a frame body; every read checks the bounds.
class BodyReader {
 public:
  explicit BodyReader(std::string_view body) : body_(body) {}

  bool u8(uint8_t* value) {
    if (body_.size() - offset_ < 1) return false;
    *value = static_cast<uint8_t>(body_[offset_++]);
    return true;
  }
  bool u32(uint32_t* value) {
    if (body_.size() - offset_ < 4) return false;
    *value = read_u32(body_.data() + offset_);
    offset_ += 4;
    return true;
  }
  bool bytes(std::string_view* value, size_t max_bytes) {
    uint32_t size;
    if (!u32(&size) || size > max_bytes || body_.size() - offset_ < size) return false;
    *value = body_.substr(offset_, size);
    offset_ += size;
    return true;
  }
  bool done() const { return offset_ == body_.size(); }

 private:
  std::string_view body_;
  size_t offset_ = 0;
};

Status check_key(const std::string& key) {
  if (key.size() > kMaxStoreKeyBytes) {
    return invalid_argument("store key of " + std::to_string(key.size()) +
                            " bytes exceeds the limit of " + std::to_string(kMaxStoreKeyBytes));
  }
  return Status::ok();
}

Result<std::string> keys_request(Opcode opcode, const std::vector<std::string>& keys) {
  if (keys.size() > kMaxStoreKeysPerRequest) {
    return invalid_argument(std::to_string(keys.size()) + " keys in one store request exceed the " +
                            "limit of " + std::to_string(kMaxStoreKeysPerRequest));
  }
  std::string body(1, static_cast<char>(opcode));
  put_u32(body, static_cast<uint32_t>(keys.size()));
  for (const std::string& key : keys) {
    FRUGAL_RETURN_IF_ERROR(check_key(key));
    put_bytes(body, key);
  }
  if (body.size() > kMaxFrameBytes) return invalid_argument("store request too large");
  return frame(std::move(body));
}

void set_no_delay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// One non-blocking connect attempt, bounded by `deadline`. Returns the connected socket, or -1
// with *error set to the errno that explains the failure.
int connect_once(const sockaddr* address, socklen_t length, const Deadline& deadline, int* error) {
  const int fd = ::socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = errno;
    return -1;
  }
  if (::connect(fd, address, length) == 0) return fd;
  if (errno != EINPROGRESS) {
    *error = errno;
    close_fd(fd);
    return -1;
  }
  if (!poll_one(fd, POLLOUT, deadline).is_ok()) {
    *error = ETIMEDOUT;
    close_fd(fd);
    return -1;
  }
  int socket_error = 0;
  socklen_t size = sizeof(socket_error);
  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &socket_error, &size);
  if (socket_error != 0) {
    *error = socket_error;
    close_fd(fd);
    return -1;
  }
  return fd;
}

struct AddrInfoDeleter {
  void operator()(addrinfo* list) const { ::freeaddrinfo(list); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

Result<AddrInfoList> resolve(const std::string& host, int port, bool passive,
                             std::string_view role) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  if (passive) hints.ai_flags = AI_PASSIVE;
  addrinfo* list = nullptr;
  const std::string service = std::to_string(port);
  const int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &list);
  if (rc != 0) {
    return invalid_argument("cannot resolve " + std::string(role) + " '" + host +
                            "': " + ::gai_strerror(rc));
  }
  return AddrInfoList(list);
}

std::string numeric_host(const sockaddr* address, socklen_t length) {
  char host[NI_MAXHOST] = "";
  ::getnameinfo(address, length, host, sizeof(host), nullptr, 0, NI_NUMERICHOST);
  return host;
}

// The server's state of one client connection.
struct ServerClient {
  int fd = -1;
  std::string in;                  // bytes received, not yet a complete frame
  std::string out;                 // reply bytes not yet sent
  std::vector<std::string> waits;  // keys of a parked wait request; empty if none
  bool waiting = false;
  bool close_after_flush = false;  // after a bad request: reply, then hang up
  bool dead = false;
};

using KeyValueMap = std::unordered_map<std::string, std::vector<char>>;

std::string reply(ReplyCode code, std::string_view payload = {}) {
  std::string body(1, static_cast<char>(code));
  body.append(payload);
  return frame(std::move(body));
}

bool all_present(const KeyValueMap& data, const std::vector<std::string>& keys) {
  return std::all_of(keys.begin(), keys.end(),
                     [&](const std::string& key) { return data.count(key) > 0; });
}

// Handles one request body. Returns false if the client broke the protocol.
bool handle_request(std::string_view body, ServerClient& client, KeyValueMap& data,
                    bool* data_changed) {
  BodyReader reader(body);
  uint8_t opcode;
  if (!reader.u8(&opcode)) return false;
  switch (static_cast<Opcode>(opcode)) {
    case Opcode::kSet: {
      std::string_view key, value;
      if (!reader.bytes(&key, kMaxStoreKeyBytes) || !reader.bytes(&value, kMaxStoreValueBytes) ||
          !reader.done()) {
        return false;
      }
      data[std::string(key)] = std::vector<char>(value.begin(), value.end());
      *data_changed = true;
      client.out += reply(ReplyCode::kOk);
      return true;
    }
    case Opcode::kGet: {
      std::string_view key;
      if (!reader.bytes(&key, kMaxStoreKeyBytes) || !reader.done()) return false;
      const auto it = data.find(std::string(key));
      if (it == data.end()) {
        client.out += reply(ReplyCode::kNotFound);
      } else {
        client.out += reply(ReplyCode::kOk, std::string_view(it->second.data(), it->second.size()));
      }
      return true;
    }
    case Opcode::kCheck:
    case Opcode::kWait: {
      uint32_t count;
      if (!reader.u32(&count) || count > kMaxStoreKeysPerRequest) return false;
      std::vector<std::string> keys;
      keys.reserve(count);
      for (uint32_t i = 0; i < count; ++i) {
        std::string_view key;
        if (!reader.bytes(&key, kMaxStoreKeyBytes)) return false;
        keys.emplace_back(key);
      }
      if (!reader.done()) return false;
      const bool present = all_present(data, keys);
      if (static_cast<Opcode>(opcode) == Opcode::kCheck) {
        client.out += reply(ReplyCode::kOk, std::string_view(present ? "\1" : "\0", 1));
      } else if (present) {
        client.out += reply(ReplyCode::kOk);
      } else {
        client.waits = std::move(keys);
        client.waiting = true;
      }
      return true;
    }
  }
  return false;
}

// Runs the complete frames buffered from `client` until it parks a wait or runs out of frames.
void process_frames(ServerClient& client, KeyValueMap& data, bool* data_changed) {
  size_t consumed = 0;
  while (!client.waiting && !client.close_after_flush) {
    if (client.in.size() - consumed < kFrameHeaderBytes) break;
    const uint32_t body_size = read_u32(client.in.data() + consumed);
    if (body_size > kMaxFrameBytes) {
      client.out += reply(ReplyCode::kBadRequest, "frame of " + std::to_string(body_size) +
                                                      " bytes exceeds the store's limit");
      client.close_after_flush = true;
      break;
    }
    if (client.in.size() - consumed - kFrameHeaderBytes < body_size) break;
    const std::string_view body(client.in.data() + consumed + kFrameHeaderBytes, body_size);
    consumed += kFrameHeaderBytes + body_size;
    if (!handle_request(body, client, data, data_changed)) {
      client.out += reply(ReplyCode::kBadRequest, "malformed store request");
      client.close_after_flush = true;
    }
  }
  client.in.erase(0, consumed);
}

// Reads what the socket has; marks the client dead on EOF, error, or an oversized backlog.
void read_available(ServerClient& client) {
  char chunk[64 << 10];
  for (;;) {
    const ssize_t n = ::recv(client.fd, chunk, sizeof(chunk), MSG_DONTWAIT);
    if (n > 0) {
      client.in.append(chunk, static_cast<size_t>(n));
      if (client.in.size() > kFrameHeaderBytes + kMaxFrameBytes + sizeof(chunk)) {
        client.dead = true;  // a client that streams past the frame limit is broken
        return;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    client.dead = true;  // EOF or a socket error
    return;
  }
}

void write_pending(ServerClient& client) {
  while (!client.out.empty()) {
    const ssize_t n =
        ::send(client.fd, client.out.data(), client.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      client.out.erase(0, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    client.dead = true;
    return;
  }
  if (client.close_after_flush) client.dead = true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RendezvousStore: gloo's throwing interface on top of the Status calls.

void RendezvousStore::set(const std::string& key, const std::vector<char>& data) {
  const Status status = put(key, data);
  if (!status.is_ok()) throw gloo::IoException(status.to_string());
}

std::vector<char> RendezvousStore::get(const std::string& key) {
  Result<std::vector<char>> value = fetch(key, default_timeout());
  if (!value.is_ok()) throw gloo::IoException(value.status().to_string());
  return std::move(value).value();
}

void RendezvousStore::wait(const std::vector<std::string>& keys) { wait(keys, default_timeout()); }

void RendezvousStore::wait(const std::vector<std::string>& keys,
                           const std::chrono::milliseconds& timeout) {
  // gloo::kNoTimeout (zero) asks to wait forever; Frugal never does, it waits the default.
  const Status status = wait_for(keys, timeout.count() > 0 ? timeout : default_timeout());
  if (!status.is_ok()) throw gloo::IoException(status.to_string());
}

// ---------------------------------------------------------------------------------------------
// TcpStoreServer

Result<std::unique_ptr<TcpStoreServer>> TcpStoreServer::start(const std::string& bind_address,
                                                              int port) {
  if (port < 0 || port > 65535) {
    return invalid_argument("TCP store port " + std::to_string(port) + " is outside 0..65535");
  }
  FRUGAL_ASSIGN_OR_RETURN(AddrInfoList addresses,
                          resolve(bind_address, port, /*passive=*/true, "the bind address"));
  const addrinfo* address = addresses.get();
  const int fd = ::socket(address->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return unavailable("socket: " + errno_text(errno));
  // Lets a restarted job take the port while the last job's connections sit in TIME_WAIT; a port
  // with a live listener still fails with EADDRINUSE.
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, address->ai_addr, address->ai_addrlen) != 0) {
    const int error = errno;
    close_fd(fd);
    const std::string where = "port " + std::to_string(port) + " on " + bind_address;
    if (error == EADDRINUSE) {
      return failed_precondition(where + " is in use (EADDRINUSE): choose another MASTER_PORT");
    }
    if (error == EACCES) {
      return failed_precondition(where + " needs privileges (EACCES): choose a MASTER_PORT " +
                                 "above 1023");
    }
    return unavailable("cannot bind " + where + ": " + errno_text(error));
  }
  if (::listen(fd, SOMAXCONN) != 0) {
    const int error = errno;
    close_fd(fd);
    return unavailable("listen on port " + std::to_string(port) + ": " + errno_text(error));
  }
  sockaddr_storage bound{};
  socklen_t bound_size = sizeof(bound);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &bound_size);
  const int bound_port = bound.ss_family == AF_INET6
                             ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                             : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  int wake[2];
  if (::pipe2(wake, O_NONBLOCK | O_CLOEXEC) != 0) {
    const int error = errno;
    close_fd(fd);
    return unavailable("pipe: " + errno_text(error));
  }
  return std::unique_ptr<TcpStoreServer>(new TcpStoreServer(fd, wake[0], wake[1], bound_port));
}

TcpStoreServer::TcpStoreServer(int listen_fd, int wake_read_fd, int wake_write_fd, int port)
    : listen_fd_(listen_fd),
      wake_read_fd_(wake_read_fd),
      wake_write_fd_(wake_write_fd),
      port_(port),
      thread_([this] { serve(); }) {}

TcpStoreServer::~TcpStoreServer() {
  const char byte = 1;
  while (::write(wake_write_fd_, &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
  close_fd(listen_fd_);
  close_fd(wake_read_fd_);
  close_fd(wake_write_fd_);
}

void TcpStoreServer::serve() {
  KeyValueMap data;
  std::list<ServerClient> clients;
  std::vector<pollfd> fds;
  bool accept_paused = false;  // out of file descriptors: retry after the next poll timeout
  for (;;) {
    fds.clear();
    fds.push_back({wake_read_fd_, POLLIN, 0});
    fds.push_back({accept_paused ? -1 : listen_fd_, POLLIN, 0});
    for (const ServerClient& client : clients) {
      fds.push_back(
          {client.fd, static_cast<short>(POLLIN | (client.out.empty() ? 0 : POLLOUT)), 0});
    }
    const int ready = ::poll(fds.data(), fds.size(), accept_paused ? 100 : -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      spdlog::error("TCP store server on port {}: poll failed: {}", port_, errno_text(errno));
      break;
    }
    if (fds[0].revents != 0) break;  // the destructor asks us to stop
    size_t index = 2;  // fds[2..] line up with the clients polled; accept only after this loop
    for (ServerClient& client : clients) {
      const short events = fds[index++].revents;
      if (events & (POLLIN | POLLHUP | POLLERR)) read_available(client);
      if (events & POLLOUT) write_pending(client);
    }
    accept_paused = false;
    if (fds[1].revents & POLLIN) {
      for (;;) {
        const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            spdlog::warn("TCP store server on port {}: accept: {}", port_, errno_text(errno));
            accept_paused = true;
          }
          break;  // EAGAIN: no more pending connections; other errors: the client gave up
        }
        set_no_delay(fd);
        clients.emplace_back().fd = fd;
      }
    }
    // Serve until nothing changes: a set may release parked waits, whose clients may have
    // further requests buffered.
    bool progress = true;
    while (progress) {
      progress = false;
      bool data_changed = false;
      for (ServerClient& client : clients) {
        if (!client.dead) process_frames(client, data, &data_changed);
      }
      if (!data_changed) break;
      for (ServerClient& client : clients) {
        if (client.waiting && all_present(data, client.waits)) {
          client.waiting = false;
          client.waits.clear();
          client.out += reply(ReplyCode::kOk);
          progress = true;
        }
      }
    }
    for (ServerClient& client : clients) {
      if (!client.dead && !client.out.empty()) write_pending(client);
    }
    clients.remove_if([](const ServerClient& client) {
      if (client.dead) close_fd(client.fd);
      return client.dead;
    });
  }
  for (const ServerClient& client : clients) close_fd(client.fd);
}

// ---------------------------------------------------------------------------------------------
// TcpStore

struct TcpStore::Reply {
  ReplyCode code;
  std::string payload;
};

Result<std::shared_ptr<TcpStore>> TcpStore::connect(const std::string& host, int port,
                                                    std::chrono::milliseconds timeout,
                                                    std::unique_ptr<TcpStoreServer> server) {
  if (port < 1 || port > 65535) {
    return invalid_argument("MASTER_PORT " + std::to_string(port) + " is outside 1..65535");
  }
  FRUGAL_ASSIGN_OR_RETURN(AddrInfoList addresses,
                          resolve(host, port, /*passive=*/false, "MASTER_ADDR"));
  const Deadline deadline(timeout);
  milliseconds backoff(10);
  int last_error = ETIMEDOUT;
  for (;;) {
    for (const addrinfo* address = addresses.get(); address; address = address->ai_next) {
      const int fd = connect_once(address->ai_addr, address->ai_addrlen, deadline, &last_error);
      if (fd < 0) continue;
      set_no_delay(fd);
      sockaddr_storage local{};
      socklen_t local_size = sizeof(local);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size);
      return std::shared_ptr<TcpStore>(
          new TcpStore(host, port, timeout, std::move(server), fd,
                       numeric_host(reinterpret_cast<const sockaddr*>(&local), local_size)));
    }
    // Refused: rank 0 is not listening yet (or never will); try again until the deadline.
    if (deadline.expired()) break;
    std::this_thread::sleep_for(std::min(backoff, milliseconds(deadline.remaining_ms())));
    backoff = std::min(backoff * 2, milliseconds(500));
    if (deadline.expired()) break;
  }
  return unavailable("cannot reach MASTER_ADDR " + endpoint_text(host, port) + " after " +
                     std::to_string(timeout.count()) + " ms (" + errno_text(last_error) +
                     "): is rank 0 running, and do all ranks use the same MASTER_ADDR and " +
                     "MASTER_PORT?");
}

TcpStore::TcpStore(std::string host, int port, std::chrono::milliseconds timeout,
                   std::unique_ptr<TcpStoreServer> server, int first_fd, std::string local_address)
    : server_(std::move(server)),
      host_(std::move(host)),
      port_(port),
      timeout_(timeout),
      local_address_(std::move(local_address)),
      idle_fds_{first_fd} {}

TcpStore::~TcpStore() {
  for (int fd : idle_fds_) close_fd(fd);
}

std::string TcpStore::describe() const {
  return "TCP store at " + endpoint_text(host_, port_) + (server_ ? " (hosted by this rank)" : "");
}

Result<int> TcpStore::acquire_connection(std::chrono::milliseconds timeout) {
  {
    std::lock_guard lock(mutex_);
    if (!idle_fds_.empty()) {
      const int fd = idle_fds_.back();
      idle_fds_.pop_back();
      return fd;
    }
  }
  // One attempt, no retries: the server was up at connect(), so a refusal now means it is gone.
  FRUGAL_ASSIGN_OR_RETURN(AddrInfoList addresses,
                          resolve(host_, port_, /*passive=*/false, "MASTER_ADDR"));
  const Deadline deadline(timeout);
  int error = ETIMEDOUT;
  for (const addrinfo* address = addresses.get(); address; address = address->ai_next) {
    const int fd = connect_once(address->ai_addr, address->ai_addrlen, deadline, &error);
    if (fd >= 0) {
      set_no_delay(fd);
      return fd;
    }
  }
  return unavailable("cannot reach the " + describe() + " (" + errno_text(error) +
                     "): rank 0, which hosts it, may have exited");
}

void TcpStore::release_connection(int fd) {
  std::lock_guard lock(mutex_);
  if (idle_fds_.size() < kMaxIdleConnections) {
    idle_fds_.push_back(fd);
  } else {
    close_fd(fd);
  }
}

Result<TcpStore::Reply> TcpStore::round_trip(const std::string& request,
                                             std::chrono::milliseconds timeout,
                                             std::string_view what) {
  const Deadline deadline(timeout);
  FRUGAL_ASSIGN_OR_RETURN(const int fd, acquire_connection(timeout));
  // A connection that failed or timed out mid-request may still receive the late reply, so it
  // is closed rather than reused.
  auto fail = [&](const Status& status) -> Status {
    close_fd(fd);
    if (status.code() == StatusCode::kDeadlineExceeded) {
      return deadline_exceeded("timed out after " + std::to_string(timeout.count()) + " ms to " +
                               std::string(what) + " in the " + describe());
    }
    return unavailable("lost connection to the " + describe() + " while trying to " +
                       std::string(what) + " (" + status.message() +
                       "): rank 0, which hosts the store, may have exited");
  };
  Status status = send_all(fd, request, deadline);
  if (!status.is_ok()) return fail(status);
  char header[kFrameHeaderBytes];
  status = recv_exact(fd, header, sizeof(header), deadline);
  if (!status.is_ok()) return fail(status);
  const uint32_t body_size = read_u32(header);
  if (body_size < 1 || body_size > kMaxFrameBytes) {
    return fail(unavailable("malformed reply of " + std::to_string(body_size) + " bytes"));
  }
  std::string body(body_size, '\0');
  status = recv_exact(fd, body.data(), body.size(), deadline);
  if (!status.is_ok()) return fail(status);
  release_connection(fd);
  Reply reply{static_cast<ReplyCode>(body[0]), body.substr(1)};
  if (reply.code == ReplyCode::kBadRequest) {
    return internal_error("the " + describe() + " rejected a request to " + std::string(what) +
                          ": " + reply.payload);
  }
  return reply;
}

Status TcpStore::put(const std::string& key, const std::vector<char>& value) {
  FRUGAL_RETURN_IF_ERROR(check_key(key));
  if (value.size() > kMaxStoreValueBytes) {
    return invalid_argument("value of " + std::to_string(value.size()) + " bytes for store key '" +
                            key + "' exceeds the limit of " + std::to_string(kMaxStoreValueBytes));
  }
  std::string body(1, static_cast<char>(Opcode::kSet));
  put_bytes(body, key);
  put_bytes(body, std::string_view(value.data(), value.size()));
  return round_trip(frame(std::move(body)), timeout_, "set key '" + key + "'").status();
}

Result<std::vector<char>> TcpStore::fetch(const std::string& key,
                                          std::chrono::milliseconds timeout) {
  FRUGAL_RETURN_IF_ERROR(wait_for({key}, timeout));
  std::string body(1, static_cast<char>(Opcode::kGet));
  put_bytes(body, key);
  FRUGAL_ASSIGN_OR_RETURN(Reply reply,
                          round_trip(frame(std::move(body)), timeout_, "get key '" + key + "'"));
  if (reply.code != ReplyCode::kOk) {
    return not_found("key '" + key + "' is not in the " + describe());
  }
  return std::vector<char>(reply.payload.begin(), reply.payload.end());
}

Status TcpStore::wait_for(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  FRUGAL_ASSIGN_OR_RETURN(std::string request, keys_request(Opcode::kWait, keys));
  return round_trip(request, timeout, "wait for key(s) " + keys_text(keys)).status();
}

Result<bool> TcpStore::contains(const std::vector<std::string>& keys) {
  FRUGAL_ASSIGN_OR_RETURN(std::string request, keys_request(Opcode::kCheck, keys));
  FRUGAL_ASSIGN_OR_RETURN(Reply reply,
                          round_trip(request, timeout_, "check key(s) " + keys_text(keys)));
  return reply.payload.size() == 1 && reply.payload[0] == 1;
}

}  // namespace frugal::detail
