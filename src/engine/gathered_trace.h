// A Chrome trace of every rank in one file: each rank's Timeline is gathered to rank 0, which
// writes it (frugal train --trace, frugal bench replay --trace).
#pragma once

#include <string>

#include "comm/communicator.h"
#include "core/status.h"
#include "core/timeline.h"

namespace frugal {

// Collective: every rank calls it; rank 0 writes `path`.
Status write_gathered_trace(Communicator& comm, const Timeline& timeline, const std::string& path);

}  // namespace frugal
