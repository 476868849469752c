// Placeholder: the powersgd family is being written (issue 3).
#include "compress/registry.h"

namespace frugal {

std::vector<CompressorEntry> powersgd_compressor_entries() { return {}; }

}  // namespace frugal
