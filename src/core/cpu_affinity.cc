#include "core/cpu_affinity.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#if defined(__linux__)
#include <sched.h>
#endif

namespace frugal {

#if defined(__linux__)
Result<std::vector<int>> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) {
    return internal_error(std::string("sched_getaffinity failed: ") + std::strerror(errno));
  }
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

Status bind_this_thread(std::span<const int> cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) {
      return invalid_argument("CPU " + std::to_string(cpu) + " is out of range [0, " +
                              std::to_string(CPU_SETSIZE) + ")");
    }
    CPU_SET(cpu, &set);
  }
  if (sched_setaffinity(0, sizeof(set), &set) != 0) {
    return internal_error("cannot bind to CPUs " + format_cpu_list(cpus) + ": " +
                          std::strerror(errno));
  }
  return Status::ok();
}
#else
Result<std::vector<int>> allowed_cpus() {
  return unimplemented("CPU binding needs Linux (sched_getaffinity)");
}
Status bind_this_thread(std::span<const int>) {
  return unimplemented("CPU binding needs Linux (sched_setaffinity)");
}
#endif

std::vector<int> cpu_share(std::span<const int> cpus, int local_rank, int local_size) {
  const auto c = static_cast<long>(cpus.size());
  const long begin = local_rank * c / local_size;
  const long end = std::max(begin + 1, (local_rank + 1) * c / local_size);
  return {cpus.begin() + begin, cpus.begin() + end};
}

std::string format_cpu_list(std::span<const int> cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

}  // namespace frugal
