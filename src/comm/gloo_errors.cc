#include "comm/gloo_errors.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <gloo/common/error.h>
#include <gloo/common/logging.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <new>

namespace frugal::detail {
namespace {

// A socket address as gloo prints it: "[10.0.0.2]:41234", "[fe80::1%eth0]:41234".
struct PrintedEndpoint {
  std::string_view text;  // the whole "[host]:port"
  std::string_view host;
};

bool is_host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == ':' || c == '.' || c == '%';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::vector<PrintedEndpoint> find_endpoints(std::string_view message) {
  std::vector<PrintedEndpoint> found;
  for (size_t open = message.find('['); open != std::string_view::npos;
       open = message.find('[', open + 1)) {
    const size_t close = message.find(']', open);
    if (close == std::string_view::npos) break;
    const std::string_view host = message.substr(open + 1, close - open - 1);
    if (host.empty() || !std::all_of(host.begin(), host.end(), is_host_char)) continue;
    size_t end = close + 1;
    if (end >= message.size() || message[end] != ':') continue;
    ++end;
    const size_t digits_start = end;
    while (end < message.size() && is_digit(message[end])) ++end;
    if (end == digits_start) continue;
    found.push_back({message.substr(open, end - open), host});
  }
  return found;
}

// "[./gloo/x.cc:12]" or "[enforce fail at ./gloo/x.cc:12]": a source file and a line number.
bool is_source_location(std::string_view bracketed) {
  constexpr std::string_view kEnforce = "enforce fail at ";
  if (bracketed.substr(0, kEnforce.size()) == kEnforce) bracketed.remove_prefix(kEnforce.size());
  const size_t colon = bracketed.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == bracketed.size()) return false;
  const std::string_view line = bracketed.substr(colon + 1);
  if (!std::all_of(line.begin(), line.end(), is_digit)) return false;
  const std::string_view file = bracketed.substr(0, colon);
  if (file.find(' ') != std::string_view::npos) return false;
  for (std::string_view suffix : {".cc", ".h", ".cpp"}) {
    if (file.size() > suffix.size() && file.substr(file.size() - suffix.size()) == suffix) {
      return true;
    }
  }
  return false;
}

bool is_timeout(std::string_view message) {
  return message.find("Timed out") != std::string_view::npos ||
         message.find("timeout") != std::string_view::npos ||
         message.find("Timeout") != std::string_view::npos;
}

}  // namespace

void PeerDirectory::add_endpoint(const std::string& endpoint, int rank) {
  endpoint_rank_.emplace(endpoint, rank);  // the first claim wins; addresses are unique anyway
}

void PeerDirectory::add_host(const std::string& ip, int rank) { host_ranks_[ip].push_back(rank); }

std::optional<int> PeerDirectory::find_rank(std::string_view message) const {
  std::optional<int> by_host;
  for (const PrintedEndpoint& endpoint : find_endpoints(message)) {
    const auto found = endpoint_rank_.find(endpoint.text);
    if (found != endpoint_rank_.end()) return found->second;
    const auto host = host_ranks_.find(endpoint.host);
    if (!by_host && host != host_ranks_.end() && host->second.size() == 1) {
      by_host = host->second.front();
    }
  }
  return by_host;
}

std::string endpoint_string(const sockaddr_storage& address, bool port_in_network_order) {
  char host[INET6_ADDRSTRLEN] = "";
  uint16_t raw_port = 0;
  if (address.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&address);
    ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
    raw_port = in->sin_port;
  } else if (address.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
    raw_port = in6->sin6_port;
  } else {
    return "";
  }
  const uint16_t port = port_in_network_order ? raw_port : ntohs(raw_port);
  // Appended piecewise: GCC 12 warns (-Wrestrict) about the equivalent chain of operator+.
  std::string text = "[";
  text += host;
  text += "]:";
  text += std::to_string(port);
  return text;
}

PeerDirectory build_peer_directory(int self, const PublishedAddresses& published) {
  PeerDirectory directory;
  const int size = static_cast<int>(published.gloo_pair_blobs.size());
  // The addresses gloo itself exchanged. In each blob, the entry for `self` comes after the
  // entries for the ranks below it, minus the owner of the blob, which has no entry.
  for (int network_order : {1, 0}) {  // gloo's own spelling first; see endpoint_string()
    for (int k = 0; k < size; ++k) {
      const std::vector<char>& blob = published.gloo_pair_blobs[k];
      if (k == self || size < 2 || blob.empty() || blob.size() % (size - 1) != 0) continue;
      const size_t entry_size = blob.size() / (size - 1);
      if (entry_size < sizeof(sockaddr_storage)) continue;
      const size_t index = static_cast<size_t>(self < k ? self : self - 1);
      sockaddr_storage address;
      std::memcpy(&address, blob.data() + index * entry_size, sizeof(address));
      const std::string endpoint = endpoint_string(address, network_order != 0);
      if (!endpoint.empty()) directory.add_endpoint(endpoint, k);
    }
  }
  // The connected addresses, for a gloo that reports the socket's far end.
  for (int k = 0; k < static_cast<int>(published.connected.size()); ++k) {
    const auto& row = published.connected[k];
    if (k != self && static_cast<size_t>(self) < row.size() && !row[self].empty()) {
      directory.add_endpoint(row[self], k);
    }
  }
  for (int k = 0; k < static_cast<int>(published.host_of_rank.size()); ++k) {
    if (k != self && !published.host_of_rank[k].empty()) {
      directory.add_host(published.host_of_rank[k], k);
    }
  }
  return directory;
}

std::string strip_gloo_source_location(std::string_view message) {
  // FileStore even doubles them: "[./gloo/rendezvous/file_store.cc:147] [same] Wait timeout".
  std::string stripped;
  size_t copied = 0;
  for (size_t open = message.find('['); open != std::string_view::npos;
       open = message.find('[', open + 1)) {
    const size_t close = message.find(']', open);
    if (close == std::string_view::npos) break;
    if (!is_source_location(message.substr(open + 1, close - open - 1))) continue;
    stripped.append(message.substr(copied, open - copied));
    copied = close + 1;
    if (copied < message.size() && message[copied] == ' ') ++copied;
    open = close;
  }
  stripped.append(message.substr(copied));
  return stripped;
}

GlooFailure classify_gloo_exception(std::exception_ptr error, const PeerDirectory& peers) {
  GlooFailure failure;
  try {
    std::rethrow_exception(error);
  } catch (const gloo::IoException& e) {
    failure.detail = strip_gloo_source_location(e.what());
    failure.code =
        is_timeout(failure.detail) ? StatusCode::kDeadlineExceeded : StatusCode::kUnavailable;
  } catch (const gloo::EnforceNotMet& e) {
    failure.detail = "gloo invariant violated: " + strip_gloo_source_location(e.what());
  } catch (const gloo::Exception& e) {
    failure.detail = strip_gloo_source_location(e.what());
    if (is_timeout(failure.detail)) failure.code = StatusCode::kDeadlineExceeded;
  } catch (const std::bad_alloc&) {
    failure.detail = "out of memory inside gloo";
  } catch (const std::exception& e) {
    failure.detail = e.what();
  } catch (...) {
    failure.detail = "unknown exception thrown by gloo";
  }
  if (failure.code == StatusCode::kUnavailable) failure.peer = peers.find_rank(failure.detail);
  return failure;
}

}  // namespace frugal::detail
