// Turns gloo's exceptions into Status values and maps the socket addresses in gloo's messages
// ("Connection closed by peer [127.0.0.1]:12200") back to ranks. Used by gloo_communicator.cc.
// Free functions are thread-safe; a PeerDirectory is immutable once built.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <exception>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace frugal::detail {

// Which rank each socket address seen in gloo's messages belongs to.
class PeerDirectory {
 public:
  // `endpoint` as gloo prints it: "[10.0.0.2]:41234".
  void add_endpoint(const std::string& endpoint, int rank);
  // A fallback for addresses not added above: a host address ("10.0.0.2") and its rank. Only
  // hosts that hold exactly one rank of the group can be told apart this way.
  void add_host(const std::string& ip, int rank);

  // The rank of the first peer address in `message` that this directory knows.
  std::optional<int> find_rank(std::string_view message) const;
  size_t endpoint_count() const { return endpoint_rank_.size(); }

 private:
  std::map<std::string, int, std::less<>> endpoint_rank_;
  std::map<std::string, std::vector<int>, std::less<>> host_ranks_;
};

// What the ranks of a connected gloo context published, for build_peer_directory().
struct PublishedAddresses {
  // gloo_pair_blobs[k]: the value rank k's gloo wrote to the store in connectFullMesh: the
  // Address::bytes() of rank k's pairs in order of peer rank (rank k itself skipped), each the
  // address the pair listened on. Empty if unknown.
  std::vector<std::vector<char>> gloo_pair_blobs;
  // connected[k][j]: rank k's pair for rank j, Pair::address().str() once connected (the local
  // end of the connection); empty for j == k or if unknown.
  std::vector<std::vector<std::string>> connected;
  // host_of_rank[k]: the IP address of rank k's gloo device.
  std::vector<std::string> host_of_rank;
};

// Builds the directory that names peers in the errors of rank `self`. Gloo's errors print the
// pair's idea of the peer's address, which is not always the socket's far end: in the gloo of
// Debian 12 the listening side keeps the address the dialling peer's pair listened on before it
// dialled. So both that address (from the gloo blobs) and the connected addresses are entered.
PeerDirectory build_peer_directory(int self, const PublishedAddresses& published);

// Formats an endpoint as gloo's Address::str() does. The gloo of Debian 12 prints the port field
// without converting it from network byte order (port 43055 reads ":12200"); a fixed gloo would
// print it converted, so both spellings are entered in directories.
std::string endpoint_string(const sockaddr_storage& address, bool port_in_network_order);

// A failure inside a call into gloo, classified.
struct GlooFailure {
  // kUnavailable: a connection broke (a peer died or left); kDeadlineExceeded: an operation or
  // connection timed out; kInternal: anything else (a gloo invariant, an allocation failure).
  StatusCode code = StatusCode::kInternal;
  std::string detail;       // gloo's message without its source location
  std::optional<int> peer;  // the rank at the far end of the broken connection, if known
};

// Classifies the exception held by `error` (gloo::IoException, gloo::EnforceNotMet,
// gloo::Exception, std::exception, or anything else).
GlooFailure classify_gloo_exception(std::exception_ptr error, const PeerDirectory& peers);

// "[./gloo/transport/tcp/pair.cc:598] Connection closed by peer ..." -> "Connection closed by
// peer ...": the source location means nothing to a user.
std::string strip_gloo_source_location(std::string_view message);

}  // namespace frugal::detail
