// The "local" backend: every rank is a thread of one process and collectives copy directly
// between the ranks' buffers (no transport). Used by unit tests and single-process runs.
// make_local_group() (comm/factory.h) creates the ranks; each LocalCommunicator is used by one
// thread, and all of them share one LocalWorld that synchronizes them.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace frugal::detail {

class LocalWorld;
struct Post;

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(std::shared_ptr<LocalWorld> world, int rank);
  ~LocalCommunicator() override;  // tells the peers this rank left

  int rank() const override { return rank_; }
  int size() const override;
  std::string_view backend() const override { return "local"; }
  std::chrono::milliseconds timeout() const override;

  Status allreduce(MutableView buf, ReduceOp op) override;
  Status allgather(ConstBytes in, MutableBytes out) override;
  Status allgatherv(ConstBytes in, std::span<const size_t> counts, MutableBytes out) override;
  Status broadcast(MutableBytes buf, int root) override;
  Status alltoallv(ConstBytes in, std::span<const size_t> send_counts, MutableBytes out,
                   std::span<const size_t> recv_counts) override;
  Status barrier() override;
  Result<std::unique_ptr<Communicator>> split(int color, int key) override;

 private:
  // Posts this rank's arguments, waits for all ranks, checks that they called the same thing.
  Status begin(const Post& post);
  // Waits for every rank to reach this rank's next phase.
  Status sync();

  std::shared_ptr<LocalWorld> world_;
  const int rank_;
  uint64_t phase_ = 0;       // phases this rank has passed; all ranks pass the same sequence
  uint64_t operations_ = 0;  // collectives called, for error messages ("allreduce #12")
  uint64_t splits_ = 0;
  std::string what_;  // the current collective, for error messages
};

}  // namespace frugal::detail
