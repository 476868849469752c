// Placeholder: the sign family is being written (issue 3).
#include "compress/registry.h"

namespace frugal {

std::vector<CompressorEntry> sign_compressor_entries() { return {}; }

}  // namespace frugal
