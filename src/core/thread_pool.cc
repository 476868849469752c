#include "core/thread_pool.h"

#include <algorithm>

namespace frugal {

ThreadPool::ThreadPool(size_t num_threads) {
  workers_.reserve(num_threads);
  for (size_t i = 0; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& w : workers_) w.join();
}

std::future<void> ThreadPool::submit(std::function<void()> task) {
  std::packaged_task<void()> packaged(std::move(task));
  std::future<void> done = packaged.get_future();
  if (workers_.empty()) {
    packaged();
    return done;
  }
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(packaged));
  }
  cv_.notify_one();
  return done;
}

void ThreadPool::parallel_for(size_t n, size_t min_chunk,
                              const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  size_t max_chunks = std::max<size_t>(1, n / std::max<size_t>(1, min_chunk));
  size_t chunks = std::min(num_threads() + 1, max_chunks);
  size_t per_chunk = (n + chunks - 1) / chunks;
  std::vector<std::future<void>> pending;
  for (size_t c = 1; c < chunks; ++c) {
    size_t begin = c * per_chunk;
    size_t end = std::min(n, begin + per_chunk);
    if (begin < end) pending.push_back(submit([&fn, begin, end] { fn(begin, end); }));
  }
  fn(0, std::min(n, per_chunk));
  for (auto& f : pending) f.get();
}

void ThreadPool::worker_loop() {
  for (;;) {
    std::packaged_task<void()> task;
    {
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace frugal
