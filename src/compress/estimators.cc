// Placeholder: the estimator family is being written (issue 3).
#include "compress/registry.h"

namespace frugal {

std::vector<CompressorEntry> estimator_compressor_entries() { return {}; }

}  // namespace frugal
