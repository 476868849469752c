// Measures the link the way the fusion cost model needs it: the latency of one collective and
// the per-byte cost of allreduce and allgather, from timed collectives of
// three sizes (the median of 5 each, a least-squares line through them). The
// result is averaged over ranks, so every rank gets the same model. Collective: every rank calls
// it at the same point of its collective sequence.
#pragma once

#include "comm/communicator.h"
#include "core/status.h"
#include "engine/fusion_plan.h"

namespace frugal {

Result<LinkModel> probe_link(Communicator& comm);

}  // namespace frugal
