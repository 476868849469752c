// CPU affinity for --bind-cores: each rank on a host runs on its own share of the host's CPUs, as
// real hosts do not share cores and a rank's threads keep each other's caches (DeepSpeed's
// --bind_cores_to_rank does the same). Linux only (sched_setaffinity); elsewhere binding is an
// error. Not thread-safe with respect to the thread being bound, which must be the caller.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

// The CPUs the calling thread may run on, ascending: what taskset, cgroups or mpirun allowed.
Result<std::vector<int>> allowed_cpus();

// Local rank `local_rank`'s share of `cpus` among `local_size` ranks on this host: contiguous
// runs, in order, whose sizes differ by at most one (rank r gets cpus[r*C/N, (r+1)*C/N)). With
// more ranks than CPUs each rank gets the one CPU cpus[r*C/N], so ranks spread evenly over them.
// Needs 0 <= local_rank < local_size and a non-empty `cpus`.
std::vector<int> cpu_share(std::span<const int> cpus, int local_rank, int local_size);

// Restricts the calling thread to `cpus`; threads it starts afterwards inherit the restriction.
Status bind_this_thread(std::span<const int> cpus);

// "0-3,8,10-11": the list form of taskset -c and /proc/PID/status's Cpus_allowed_list.
std::string format_cpu_list(std::span<const int> cpus);

}  // namespace frugal
