// A small fixed-size thread pool for data-parallel kernels (compression of large tensors,
// snapshot copies). Owned by whoever needs it; submit() and parallel_for() are thread-safe.
// Tasks must not throw (the exception policy in core/status.h).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

namespace frugal {

class ThreadPool {
 public:
  // num_threads == 0 makes a pool that runs every task inline on the caller's thread.
  explicit ThreadPool(size_t num_threads);
  ~ThreadPool();  // finishes queued tasks, then joins
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t num_threads() const { return workers_.size(); }

  std::future<void> submit(std::function<void()> task);

  // Splits [0, n) into at most num_threads() + 1 contiguous chunks of at least `min_chunk`
  // elements, runs fn(begin, end) on each (one on the calling thread), and waits for all.
  void parallel_for(size_t n, size_t min_chunk, const std::function<void(size_t, size_t)>& fn);

 private:
  void worker_loop();

  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace frugal
