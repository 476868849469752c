#include "comm/gloo_communicator.h"

#include <ifaddrs.h>
#include <signal.h>

#include <gloo/allgather.h>
#include <gloo/allgatherv.h>
#include <gloo/allreduce.h>
#include <gloo/alltoallv.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/attr.h>
#include <gloo/transport/tcp/device.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>
#include <thread>

#include "comm/backends.h"
#include "comm/gloo_errors.h"
#include "comm/tcp_store.h"
#include "core/clock.h"

namespace frugal::detail {

using std::chrono::milliseconds;

struct GlooGroup {
  int rank = 0;
  int size = 1;
  milliseconds timeout{60'000};
  // The job's store, shared with every group split from this one; null in a world of one rank.
  std::shared_ptr<RendezvousStore> root_store;
  std::string prefix;                      // this group's keys are "<prefix>/..."
  std::shared_ptr<RendezvousStore> store;  // root_store seen under prefix
  gloo::transport::tcp::attr device_attr;  // split() opens the children's devices alike
  std::vector<int> world_ranks;            // world rank of each rank of this group
  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::Context> context;  // null when size == 1
  PeerDirectory peers;

  // After a timeout a rank gives the others this long to write down the root cause (the fault
  // note); operations time out this much earlier so that the whole call keeps to `timeout`.
  milliseconds fault_note_grace() const { return std::min(milliseconds(500), timeout / 10); }
  milliseconds operation_timeout() const {
    return std::max(timeout - fault_note_grace(), milliseconds(1));
  }

  ~GlooGroup() {
    context.reset();  // closes the connections before the device's event loop stops
    device.reset();
  }
};

namespace {

// Keys of a group, under its prefix. The fault note is written once, by the first rank that sees
// a failure, so that ranks that merely time out can report the root cause.
std::string device_key(int rank) { return "rank/" + std::to_string(rank) + "/device"; }
std::string pairs_key(int rank) { return "rank/" + std::to_string(rank) + "/pairs"; }
constexpr const char* kFaultKey = "fault";
// Operations take tags 1, 2, ...; the barrier that ends the rendezvous takes one of its own.
constexpr uint32_t kConnectBarrierTag = 0;

std::string to_string(const std::vector<char>& bytes) { return {bytes.begin(), bytes.end()}; }
std::vector<char> to_bytes(std::string_view text) { return {text.begin(), text.end()}; }

// "1, 3", or "1 (world rank 3)" for ranks of a split group.
std::string rank_list(const std::vector<int>& ranks, const std::vector<int>& world_ranks) {
  std::string text;
  for (int rank : ranks) {
    text += (text.empty() ? "" : ", ") + std::to_string(rank);
    if (rank < static_cast<int>(world_ranks.size()) && world_ranks[rank] != rank) {
      text += " (world rank " + std::to_string(world_ranks[rank]) + ")";
    }
  }
  return text;
}

milliseconds remaining(SteadyClock::time_point deadline) {
  const auto left = std::chrono::ceil<milliseconds>(deadline - SteadyClock::now());
  return std::max(left, milliseconds(0));
}

// ---------------------------------------------------------------------------------------------
// Stores

// gloo's FileStore, with a mutex (it keeps a list of the files it wrote, unguarded, and children
// of split() share one store across threads), an exact timeout (its own wait rounds the elapsed
// time down to whole seconds) and contains().
class FileRendezvousStore final : public RendezvousStore {
 public:
  static Result<std::shared_ptr<FileRendezvousStore>> open(const std::string& path,
                                                           milliseconds timeout) {
    std::error_code error;
    std::filesystem::create_directories(path, error);
    if (error) {
      return invalid_argument("cannot create the rendezvous directory FRUGAL_STORE_PATH '" + path +
                              "': " + error.message());
    }
    try {
      return std::shared_ptr<FileRendezvousStore>(new FileRendezvousStore(path, timeout));
    } catch (const std::exception& e) {
      return invalid_argument("cannot open the rendezvous directory FRUGAL_STORE_PATH '" + path +
                              "': " + strip_gloo_source_location(e.what()));
    }
  }

  Status put(const std::string& key, const std::vector<char>& value) override {
    std::lock_guard lock(mutex_);
    try {
      store_.set(key, value);
      return Status::ok();
    } catch (const std::exception& e) {
      const std::string detail = strip_gloo_source_location(e.what());
      if (detail.find("already exists") != std::string::npos) {
        return failed_precondition("rendezvous key '" + key + "' already exists in the " +
                                   describe() + ": the directory holds files of an earlier " +
                                   "job, or two ranks were given the same RANK; give every job " +
                                   "an empty FRUGAL_STORE_PATH");
      }
      return unavailable("cannot write rendezvous key '" + key + "' to the " + describe() + ": " +
                         detail);
    }
  }

  Result<std::vector<char>> fetch(const std::string& key, milliseconds timeout) override {
    FRUGAL_RETURN_IF_ERROR(wait_for({key}, timeout));
    std::lock_guard lock(mutex_);
    try {
      return store_.get(key);
    } catch (const std::exception& e) {
      return unavailable("cannot read rendezvous key '" + key + "' from the " + describe() + ": " +
                         strip_gloo_source_location(e.what()));
    }
  }

  Status wait_for(const std::vector<std::string>& keys, milliseconds timeout) override {
    // Polling, as gloo's FileStore does, because inotify does not work on shared file systems.
    const auto deadline = SteadyClock::now() + timeout;
    for (;;) {
      FRUGAL_ASSIGN_OR_RETURN(const bool present, contains(keys));
      if (present) return Status::ok();
      if (SteadyClock::now() >= deadline) {
        return deadline_exceeded("timed out after " + std::to_string(timeout.count()) +
                                 " ms waiting for " + std::to_string(keys.size()) +
                                 " rendezvous key(s) in the " + describe());
      }
      std::this_thread::sleep_for(std::min(milliseconds(5), remaining(deadline)));
    }
  }

  Result<bool> contains(const std::vector<std::string>& keys) override {
    std::lock_guard lock(mutex_);
    try {
      return store_.check(keys);
    } catch (const std::exception& e) {
      return unavailable("cannot read the " + describe() + ": " +
                         strip_gloo_source_location(e.what()));
    }
  }

  std::string describe() const override { return "file store in " + path_; }
  milliseconds default_timeout() const override { return timeout_; }

 private:
  // Makes FileStore's protected check() reachable.
  struct CheckableFileStore : gloo::rendezvous::FileStore {
    using FileStore::check;
    using FileStore::FileStore;
  };

  FileRendezvousStore(const std::string& path, milliseconds timeout)
      : store_(path), path_(path), timeout_(timeout) {}

  std::mutex mutex_;
  CheckableFileStore store_;  // guarded by mutex_
  const std::string path_;
  const milliseconds timeout_;
};

// A view of a store under a key prefix, so that groups (the world, each split() child) do not
// collide. Like gloo's PrefixStore, but keeping contains() and the Status calls.
class PrefixedStore : public RendezvousStore {
 public:
  PrefixedStore(std::shared_ptr<RendezvousStore> base, std::string prefix)
      : base_(std::move(base)), prefix_(std::move(prefix) + "/") {}

  Status put(const std::string& key, const std::vector<char>& value) override {
    return base_->put(prefix_ + key, value);
  }
  Result<std::vector<char>> fetch(const std::string& key, milliseconds timeout) override {
    return base_->fetch(prefix_ + key, timeout);
  }
  Status wait_for(const std::vector<std::string>& keys, milliseconds timeout) override {
    return base_->wait_for(with_prefix(keys), timeout);
  }
  Result<bool> contains(const std::vector<std::string>& keys) override {
    return base_->contains(with_prefix(keys));
  }
  std::string describe() const override { return base_->describe(); }
  milliseconds default_timeout() const override { return base_->default_timeout(); }

 private:
  std::vector<std::string> with_prefix(const std::vector<std::string>& keys) const {
    std::vector<std::string> prefixed;
    prefixed.reserve(keys.size());
    for (const std::string& key : keys) prefixed.push_back(prefix_ + key);
    return prefixed;
  }

  std::shared_ptr<RendezvousStore> base_;
  const std::string prefix_;
};

// What gloo's connectFullMesh sees: every wait it makes ends at the rendezvous deadline, whatever
// timeout gloo asks for, so that the rendezvous as a whole keeps to the communicator's timeout.
// It also remembers what gloo wrote, for the peer directory.
class DeadlineStore final : public RendezvousStore {
 public:
  DeadlineStore(std::shared_ptr<RendezvousStore> base, SteadyClock::time_point deadline)
      : base_(std::move(base)), deadline_(deadline) {}

  Status put(const std::string& key, const std::vector<char>& value) override {
    written_[key] = value;
    return base_->put(key, value);
  }
  const std::map<std::string, std::vector<char>>& written() const { return written_; }
  Result<std::vector<char>> fetch(const std::string& key, milliseconds timeout) override {
    return base_->fetch(key, timeout);
  }
  Status wait_for(const std::vector<std::string>& keys, milliseconds timeout) override {
    return base_->wait_for(keys, timeout);
  }
  Result<bool> contains(const std::vector<std::string>& keys) override {
    return base_->contains(keys);
  }
  std::string describe() const override { return base_->describe(); }
  milliseconds default_timeout() const override {
    return std::max(remaining(deadline_), milliseconds(1));
  }
  using RendezvousStore::wait;
  void wait(const std::vector<std::string>& keys, const milliseconds& /*timeout*/) override {
    RendezvousStore::wait(keys, default_timeout());
  }

 private:
  std::shared_ptr<RendezvousStore> base_;
  const SteadyClock::time_point deadline_;
  std::map<std::string, std::vector<char>> written_;  // gloo calls from one thread only
};

// ---------------------------------------------------------------------------------------------
// Devices

std::vector<std::string> network_interfaces() {
  std::set<std::string> names;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) == 0) {
    for (const ifaddrs* entry = list; entry; entry = entry->ifa_next) names.insert(entry->ifa_name);
    ::freeifaddrs(list);
  }
  return {names.begin(), names.end()};
}

Status check_interface_exists(const std::string& iface) {
  const std::vector<std::string> names = network_interfaces();
  if (std::find(names.begin(), names.end(), iface) != names.end()) return Status::ok();
  std::string available;
  for (const std::string& name : names) available += (available.empty() ? "" : ", ") + name;
  return invalid_argument(
      "network interface '" + iface +
      "' (--iface, FRUGAL_SOCKET_IFNAME or GLOO_SOCKET_IFNAME) does not exist on this " +
      "host; available interfaces: " + available);
}

std::string device_target(const gloo::transport::tcp::attr& attr) {
  return attr.iface.empty() ? "host address '" + attr.hostname + "'"
                            : "network interface '" + attr.iface + "'";
}

// "tcp, pci=, iface=lo, speed=-1, addr=[127.0.0.1]" -> "127.0.0.1"
std::string device_host(const std::string& device_description) {
  const size_t start = device_description.find("addr=[");
  if (start == std::string::npos) return "";
  const size_t end = device_description.find(']', start);
  if (end == std::string::npos) return "";
  return device_description.substr(start + 6, end - start - 6);
}

// Gloo writes to its sockets with writev(), which raises SIGPIPE when the peer is gone; the
// default action kills the process before the error can be reported (and names no rank). A
// program that installed its own handler keeps it.
void ignore_sigpipe_unless_handled() {
  struct sigaction current = {};
  if (::sigaction(SIGPIPE, nullptr, &current) == 0 && current.sa_handler == SIG_DFL) {
    ::signal(SIGPIPE, SIG_IGN);
  }
}

// ---------------------------------------------------------------------------------------------
// Rendezvous

// Which of the group's ranks have not published their device yet.
std::vector<int> missing_ranks(RendezvousStore& store, int size) {
  std::vector<int> missing;
  for (int rank = 0; rank < size; ++rank) {
    Result<bool> present = store.contains({device_key(rank)});
    if (!present.is_ok() || !*present) missing.push_back(rank);
  }
  return missing;
}

std::string group_name(const GlooGroup& group) {
  return "rank " + std::to_string(group.rank) + " of " + std::to_string(group.size) +
         (group.prefix.find("/split") == std::string::npos ? ""
                                                           : " (split group " + group.prefix + ")");
}

// Connects every rank of `group` to every other, within group.timeout. On success the group
// holds its device, context and peer directory.
Status connect_group(GlooGroup& group) {
  if (group.size == 1) return Status::ok();
  ignore_sigpipe_unless_handled();
  const auto deadline = SteadyClock::now() + group.timeout;
  const std::string where = "gloo rendezvous of " + group_name(group);
  group.store = std::make_shared<PrefixedStore>(group.root_store, group.prefix);
  RendezvousStore& store = *group.store;

  try {
    group.device = gloo::transport::tcp::CreateDevice(group.device_attr);
  } catch (const std::exception& e) {
    return invalid_argument(where + ": cannot open a gloo TCP device on " +
                            device_target(group.device_attr) + ": " +
                            strip_gloo_source_location(e.what()) +
                            "; set FRUGAL_SOCKET_IFNAME to an interface that has an address");
  }
  const std::string device_description = group.device->str();

  // Join: publishing the device is this rank's "I am here", which tells, on a timeout, who never
  // came (gloo's own wait only says which key it missed).
  FRUGAL_RETURN_IF_ERROR(
      store.put(device_key(group.rank), to_bytes(device_description)).with_context(where));
  std::vector<std::string> device_keys;
  for (int rank = 0; rank < group.size; ++rank) device_keys.push_back(device_key(rank));
  Status joined = store.wait_for(device_keys, remaining(deadline));
  if (joined.code() == StatusCode::kDeadlineExceeded) {
    const std::vector<int> missing = missing_ranks(store, group.size);
    std::vector<int> present;
    for (int rank = 0; rank < group.size; ++rank) {
      if (std::find(missing.begin(), missing.end(), rank) == missing.end()) present.push_back(rank);
    }
    return deadline_exceeded(where + " through the " + store.describe() + " timed out after " +
                             std::to_string(group.timeout.count()) + " ms: rank(s) " +
                             rank_list(missing, group.world_ranks) +
                             " never joined (joined: " + rank_list(present, group.world_ranks) +
                             "); check that every rank was started with the same WORLD_SIZE " +
                             "and rendezvous settings");
  }
  FRUGAL_RETURN_IF_ERROR(joined.with_context(where));

  auto context = std::make_shared<gloo::rendezvous::Context>(group.rank, group.size);
  // Pairs wait 5x the context timeout to connect; this keeps that within the deadline. The
  // operations set their own timeout, so this setting only bounds the connecting.
  context->setTimeout(std::max(group.timeout / 5, milliseconds(1)));
  DeadlineStore gloo_store(group.store, deadline);
  try {
    context->connectFullMesh(gloo_store, group.device);
  } catch (...) {
    const GlooFailure failure = classify_gloo_exception(std::current_exception(), PeerDirectory());
    return Status(failure.code == StatusCode::kInternal ? StatusCode::kUnavailable : failure.code,
                  where + ": connecting to the peers failed: " + failure.detail);
  }
  context->setTimeout(group.timeout);
  group.context = context;

  // The barrier proves that every connection carries data before the communicator is handed out
  // (a rank dying now fails the rendezvous, not the first collective), and it orders gloo's event
  // loop, which rewrites each pair's address once it connects, before the reads below.
  try {
    gloo::BarrierOptions barrier(context);
    barrier.setTag(kConnectBarrierTag);
    barrier.setTimeout(std::max(remaining(deadline), milliseconds(1)));
    gloo::barrier(barrier);
  } catch (...) {
    const GlooFailure failure = classify_gloo_exception(std::current_exception(), PeerDirectory());
    return Status(failure.code == StatusCode::kInternal ? StatusCode::kUnavailable : failure.code,
                  where + ": the first barrier after connecting failed: " + failure.detail);
  }

  // Publish the local address of each of this rank's connections, and collect what every rank
  // published, gloo included: with it the directory can name the rank behind an address in
  // gloo's errors.
  std::string row;
  for (int peer = 0; peer < group.size; ++peer) {
    if (peer > 0) row += ',';
    if (peer != group.rank) row += context->getPair(peer)->address().str();
  }
  FRUGAL_RETURN_IF_ERROR(store.put(pairs_key(group.rank), to_bytes(row)).with_context(where));
  // Gloo files this rank's pair addresses under the rank's number; a gloo that names its key
  // differently just leaves the blobs empty.
  const bool gloo_key_known = gloo_store.written().count(std::to_string(group.rank)) > 0;
  PublishedAddresses published;
  published.gloo_pair_blobs.resize(group.size);
  published.connected.resize(group.size);
  published.host_of_rank.resize(group.size);
  for (int rank = 0; rank < group.size; ++rank) {
    Result<std::vector<char>> connected = store.fetch(pairs_key(rank), remaining(deadline));
    if (!connected.is_ok()) {
      return Status(connected.status().code(),
                    where + ": rank " + std::to_string(rank) + " connected but did not finish " +
                        "the rendezvous: " + connected.status().message());
    }
    const std::string text = to_string(*connected);
    size_t start = 0;
    for (int peer = 0; peer < group.size; ++peer) {
      const size_t end = std::min(text.find(',', start), text.size());
      published.connected[rank].push_back(text.substr(start, end - start));
      start = end + 1;
    }
    // Both keys were written before the rank connected, so they are there now.
    Result<std::vector<char>> device = store.fetch(device_key(rank), remaining(deadline));
    if (device.is_ok()) published.host_of_rank[rank] = device_host(to_string(*device));
    if (gloo_key_known) {
      Result<std::vector<char>> blob = store.fetch(std::to_string(rank), remaining(deadline));
      if (blob.is_ok()) published.gloo_pair_blobs[rank] = std::move(blob).value();
    }
  }
  group.peers = build_peer_directory(group.rank, published);
  return Status::ok();
}

// ---------------------------------------------------------------------------------------------
// Gloo calls

// Gloo wants typed buffers; only the element size matters, the reduction is type-erased.
template <typename Options>
void set_allreduce_output(Options& options, void* data, size_t count, size_t element_size) {
  switch (element_size) {
    case 1:
      return options.setOutput(static_cast<uint8_t*>(data), count);
    case 2:
      return options.setOutput(static_cast<uint16_t*>(data), count);
    case 4:
      return options.setOutput(static_cast<uint32_t*>(data), count);
    case 8:
      return options.setOutput(static_cast<uint64_t*>(data), count);
  }
  FRUGAL_CHECK(false, "unsupported element size " + std::to_string(element_size));
}

// Gloo rejects null buffers even when empty; empty spans may carry one.
uint8_t* bytes_or_dummy(const std::byte* data, uint8_t* dummy) {
  return data ? reinterpret_cast<uint8_t*>(const_cast<std::byte*>(data)) : dummy;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// GlooCommunicator

GlooCommunicator::GlooCommunicator(std::unique_ptr<GlooGroup> group) : group_(std::move(group)) {}

GlooCommunicator::~GlooCommunicator() = default;

int GlooCommunicator::rank() const { return group_->rank; }
int GlooCommunicator::size() const { return group_->size; }
std::chrono::milliseconds GlooCommunicator::timeout() const { return group_->timeout; }

std::string GlooCommunicator::rank_name(int rank) const {
  std::string name = "rank " + std::to_string(rank);
  const auto& world = group_->world_ranks;
  if (rank >= 0 && rank < static_cast<int>(world.size()) && world[rank] != rank) {
    name += " (world rank " + std::to_string(world[rank]) + ")";
  }
  return name;
}

Status GlooCommunicator::begin(std::string_view op) {
  const std::string what = std::string(op) + " #" + std::to_string(operations_ + 1) + " on " +
                           rank_name(group_->rank) + " of " + std::to_string(group_->size);
  if (!broken_.is_ok()) {
    return Status(broken_.code(),
                  what + ": not run, this communicator failed earlier: " + broken_.message());
  }
  ++operations_;
  ++tag_;
  what_ = what;
  return Status::ok();
}

Status GlooCommunicator::fail(std::exception_ptr error) {
  const GlooFailure failure = classify_gloo_exception(error, group_->peers);
  std::string message = what_ + ": ";
  std::string note;  // what this rank would tell the others
  const std::string self = rank_name(group_->rank);
  if (failure.code == StatusCode::kUnavailable) {
    const std::string peer = failure.peer ? rank_name(*failure.peer) : "a peer";
    message += "lost connection to " + peer + " (" + failure.detail + ")";
    note =
        self + " lost its connection to " + peer + " during " + what_ + " (" + failure.detail + ")";
  } else if (failure.code == StatusCode::kDeadlineExceeded) {
    message += "no progress within the " + std::to_string(group_->timeout.count()) +
               " ms timeout (" + failure.detail + ")";
    note = self + " timed out during " + what_;
  } else {
    message += failure.detail;
    note = self + " failed during " + what_ + ": " + failure.detail;
  }

  // The fault note. A rank that lost a connection usually knows the culprit; a rank that timed
  // out does not, but another rank may have written down what it saw. Give the others a moment
  // to write it; the store calls are bounded, and skipped if the store is gone with rank 0.
  if (group_->store) {
    RendezvousStore& store = *group_->store;
    const milliseconds grace = failure.code == StatusCode::kDeadlineExceeded
                                   ? group_->fault_note_grace()
                                   : milliseconds(0);
    Result<bool> present = store.contains({kFaultKey});
    if (present.is_ok() && !*present && grace.count() > 0) {
      present = Result<bool>(store.wait_for({kFaultKey}, grace).is_ok());
    }
    if (!present.is_ok()) {
      // With a TCP store this usually means its host, rank 0, is gone.
      message += "; the rendezvous store is unreachable too: " + present.status().message();
    } else if (*present) {
      Result<std::vector<char>> existing = store.fetch(kFaultKey, milliseconds(100));
      if (existing.is_ok()) message += "; first failure in this group: " + to_string(*existing);
    } else {
      // A rank that loses the race for the key gets an "already exists" error; nothing to do.
      (void)store.put(kFaultKey, to_bytes(note));
      if (failure.code == StatusCode::kDeadlineExceeded) {
        message += "; no rank reported a failure: a peer may be hung, slow, or calling a " +
                   std::string("different collective");
      }
    }
  }
  broken_ = Status(failure.code, message);
  return broken_;
}

Status GlooCommunicator::allreduce(MutableView buf, ReduceOp op) {
  FRUGAL_RETURN_IF_ERROR(check_allreduce_args(*this, buf, op));
  FRUGAL_RETURN_IF_ERROR(begin("allreduce"));
  const size_t count = static_cast<size_t>(buf.numel());
  if (group_->size == 1 || count == 0) return Status::ok();  // avg over one rank: nothing to do
  try {
    gloo::AllreduceOptions options(group_->context);
    set_allreduce_output(options, buf.data, count, dtype_size(buf.dtype));
    const DType dtype = buf.dtype;
    options.setReduceFunction([dtype, op](void* out, const void* a, const void* b, size_t n) {
      reduce_elements(out, a, b, n, dtype, op);
    });
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::allreduce(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  if (op == ReduceOp::kAvg) scale_in_place(buf.data, count, buf.dtype, group_->size);
  return Status::ok();
}

Status GlooCommunicator::allgather(ConstBytes in, MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_allgather_args(*this, in, out));
  FRUGAL_RETURN_IF_ERROR(begin("allgather"));
  if (in.empty()) return Status::ok();  // every rank sends the same size: nothing at all
  if (group_->size == 1) {
    std::memmove(out.data(), in.data(), in.size());
    return Status::ok();
  }
  try {
    gloo::AllgatherOptions options(group_->context);
    uint8_t dummy = 0;
    options.setInput(bytes_or_dummy(in.data(), &dummy), in.size());
    options.setOutput(reinterpret_cast<uint8_t*>(out.data()), out.size());
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::allgather(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  return Status::ok();
}

Status GlooCommunicator::allgatherv(ConstBytes in, std::span<const size_t> counts,
                                    MutableBytes out) {
  FRUGAL_RETURN_IF_ERROR(check_allgatherv_args(*this, in, counts, out));
  FRUGAL_RETURN_IF_ERROR(begin("allgatherv"));
  if (out.empty()) return Status::ok();  // all counts are zero on every rank
  if (group_->size == 1) {
    std::memmove(out.data(), in.data(), in.size());
    return Status::ok();
  }
  try {
    gloo::AllgathervOptions options(group_->context);
    uint8_t dummy = 0;
    options.setInput(bytes_or_dummy(in.data(), &dummy), in.size());
    options.setOutput(reinterpret_cast<uint8_t*>(out.data()),
                      std::vector<size_t>(counts.begin(), counts.end()));
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::allgatherv(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  return Status::ok();
}

Status GlooCommunicator::broadcast(MutableBytes buf, int root) {
  FRUGAL_RETURN_IF_ERROR(check_broadcast_args(*this, root));
  FRUGAL_RETURN_IF_ERROR(begin("broadcast"));
  if (group_->size == 1 || buf.empty()) return Status::ok();
  try {
    gloo::BroadcastOptions options(group_->context);
    options.setOutput(reinterpret_cast<uint8_t*>(buf.data()), buf.size());
    options.setRoot(root);
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::broadcast(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  return Status::ok();
}

Status GlooCommunicator::alltoallv(ConstBytes in, std::span<const size_t> send_counts,
                                   MutableBytes out, std::span<const size_t> recv_counts) {
  FRUGAL_RETURN_IF_ERROR(check_alltoallv_args(*this, in, send_counts, out, recv_counts));
  FRUGAL_RETURN_IF_ERROR(begin("alltoallv"));
  if (group_->size == 1) {
    if (!in.empty()) std::memmove(out.data(), in.data(), in.size());
    return Status::ok();
  }
  try {
    gloo::AlltoallvOptions options(group_->context);
    uint8_t dummy_in = 0;
    uint8_t dummy_out = 0;
    options.setInput(bytes_or_dummy(in.data(), &dummy_in),
                     std::vector<int64_t>(send_counts.begin(), send_counts.end()));
    options.setOutput(bytes_or_dummy(out.data(), &dummy_out),
                      std::vector<int64_t>(recv_counts.begin(), recv_counts.end()));
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::alltoallv(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  return Status::ok();
}

Status GlooCommunicator::barrier() {
  FRUGAL_RETURN_IF_ERROR(begin("barrier"));
  if (group_->size == 1) return Status::ok();
  try {
    gloo::BarrierOptions options(group_->context);
    options.setTag(tag_);
    options.setTimeout(group_->operation_timeout());
    gloo::barrier(options);
  } catch (...) {
    return fail(std::current_exception());
  }
  return Status::ok();
}

Result<std::unique_ptr<Communicator>> GlooCommunicator::split(int color, int key) {
  FRUGAL_RETURN_IF_ERROR(check_split_args(*this, color));
  FRUGAL_RETURN_IF_ERROR(begin("split"));
  const int size = group_->size;
  std::vector<int32_t> colors_and_keys(2 * static_cast<size_t>(size));
  colors_and_keys[2 * group_->rank] = color;
  colors_and_keys[2 * group_->rank + 1] = key;
  if (size > 1) {
    try {
      int32_t mine[2] = {color, key};
      gloo::AllgatherOptions options(group_->context);
      options.setInput(mine, 2);
      options.setOutput(colors_and_keys.data(), colors_and_keys.size());
      options.setTag(tag_);
      options.setTimeout(group_->operation_timeout());
      gloo::allgather(options);
    } catch (...) {
      return fail(std::current_exception());
    }
  }
  // Members of this rank's color, ordered by (key, old rank).
  std::vector<int> members;
  for (int rank = 0; rank < size; ++rank) {
    if (colors_and_keys[2 * rank] == color) members.push_back(rank);
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) {
    return colors_and_keys[2 * a + 1] < colors_and_keys[2 * b + 1];
  });

  auto child = std::make_unique<GlooGroup>();
  child->rank =
      static_cast<int>(std::find(members.begin(), members.end(), group_->rank) - members.begin());
  child->size = static_cast<int>(members.size());
  child->timeout = group_->timeout;
  child->root_store = group_->root_store;
  // The operation number is the same on every rank, so it makes the prefix unique per split.
  child->prefix =
      group_->prefix + "/split" + std::to_string(operations_) + "/color" + std::to_string(color);
  child->device_attr = group_->device_attr;
  for (int member : members) child->world_ranks.push_back(group_->world_ranks[member]);
  // The ranks now disagree on whether the split happened, so this communicator is broken too.
  const Status connected = connect_group(*child);
  if (!connected.is_ok()) {
    broken_ = connected.with_context(what_);
    return broken_;
  }
  return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(std::move(child)));
}

// ---------------------------------------------------------------------------------------------
// The world

Result<std::unique_ptr<Communicator>> make_gloo_communicator(const CommConfig& config) {
  if (config.world_size < 1 || config.rank < 0 || config.rank >= config.world_size) {
    return invalid_argument("gloo: RANK " + std::to_string(config.rank) +
                            " is not in a world of WORLD_SIZE " +
                            std::to_string(config.world_size));
  }
  if (config.timeout_ms <= 0) {
    return invalid_argument("gloo: the timeout must be positive, got " +
                            std::to_string(config.timeout_ms) + " ms");
  }
  auto group = std::make_unique<GlooGroup>();
  group->rank = config.rank;
  group->size = config.world_size;
  group->timeout = milliseconds(config.timeout_ms);
  group->prefix = "frugal";
  group->world_ranks.resize(config.world_size);
  std::iota(group->world_ranks.begin(), group->world_ranks.end(), 0);

  if (!config.iface.empty()) {
    FRUGAL_RETURN_IF_ERROR(check_interface_exists(config.iface));
    group->device_attr.iface = config.iface;
  } else if (!config.hostname.empty()) {
    group->device_attr.hostname = config.hostname;
  }

  if (config.world_size > 1) {
    if (!config.master_addr.empty()) {
      std::unique_ptr<TcpStoreServer> server;
      if (config.rank == 0) {
        FRUGAL_ASSIGN_OR_RETURN(server, TcpStoreServer::start("0.0.0.0", config.master_port));
      }
      FRUGAL_ASSIGN_OR_RETURN(std::shared_ptr<TcpStore> store,
                              TcpStore::connect(config.master_addr, config.master_port,
                                                group->timeout, std::move(server)));
      // By default, bind where this host reaches the master: other hosts can reach us there.
      if (config.iface.empty() && config.hostname.empty()) {
        group->device_attr.hostname = store->local_address();
      }
      group->root_store = std::move(store);
    } else if (!config.store_path.empty()) {
      FRUGAL_ASSIGN_OR_RETURN(group->root_store,
                              FileRendezvousStore::open(config.store_path, group->timeout));
      // A file store usually means one host; loopback always works there. Ranks on several hosts
      // sharing a file system set FRUGAL_SOCKET_IFNAME or a hostname.
      if (config.iface.empty() && config.hostname.empty()) {
        group->device_attr.hostname = "127.0.0.1";
      }
    } else {
      return invalid_argument("gloo: " + std::to_string(config.world_size) +
                              " ranks need a rendezvous: set FRUGAL_STORE_PATH to a directory " +
                              "all ranks share (one host), or MASTER_ADDR and MASTER_PORT (rank " +
                              "0 then hosts a TCP store)");
    }
  }
  FRUGAL_RETURN_IF_ERROR(connect_group(*group));
  return std::unique_ptr<Communicator>(std::make_unique<GlooCommunicator>(std::move(group)));
}

}  // namespace frugal::detail
