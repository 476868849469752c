// The "gloo" backend: collectives over TCP through Debian's libgloo, ranks meeting through a file
// store or a TCP store hosted by rank 0. Made by make_gloo_communicator() (comm/backends.h) and
// split(). One thread at a time per communicator; split() children may run concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace frugal::detail {

// Everything one communicator holds of gloo: the store, the device, the connected context and the
// directory that names peers in gloo's errors. Defined in gloo_communicator.cc.
struct GlooGroup;

// Note: connecting a group of two or more ranks sets SIGPIPE to ignored if it still has its
// default action, since gloo's socket writes raise it when a peer dies.
class GlooCommunicator final : public Communicator {
 public:
  explicit GlooCommunicator(std::unique_ptr<GlooGroup> group);
  // Closes this rank's connections: peers in a collective with it get an error naming this rank.
  ~GlooCommunicator() override;

  int rank() const override;
  int size() const override;
  std::string_view backend() const override { return "gloo"; }
  std::chrono::milliseconds timeout() const override;

  Status allreduce(MutableView buf, ReduceOp op) override;
  Status allgather(ConstBytes in, MutableBytes out) override;
  Status allgatherv(ConstBytes in, std::span<const size_t> counts, MutableBytes out) override;
  Status broadcast(MutableBytes buf, int root) override;
  Status alltoallv(ConstBytes in, std::span<const size_t> send_counts, MutableBytes out,
                   std::span<const size_t> recv_counts) override;
  Status barrier() override;
  // Children rendezvous under their own store prefix with their own gloo device, so they are
  // independent of this communicator and of each other.
  Result<std::unique_ptr<Communicator>> split(int color, int key) override;

 private:
  // Starts operation `op`: fails fast if the communicator is broken, else numbers the operation
  // and picks its gloo tag (the same on every rank, as all ranks call the same sequence).
  Status begin(std::string_view op);
  // Turns the exception of a failed gloo call into the Status that breaks this communicator:
  // names the peer behind a broken connection, reads or writes the group's fault note.
  Status fail(std::exception_ptr error);
  // "rank 2", or "rank 2 (world rank 5)" in a split group.
  std::string rank_name(int rank) const;

  std::unique_ptr<GlooGroup> group_;
  uint64_t operations_ = 0;  // collectives started, for messages ("allreduce #12")
  uint32_t tag_ = 0;         // gloo tag of the current operation
  std::string what_;         // "allreduce #12 on rank 0 of 4"
  Status broken_;            // the first failure; every later call returns it
};

}  // namespace frugal::detail
