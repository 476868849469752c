// Placeholder: the adtopk family is being written (issue 3).
#include "compress/registry.h"

namespace frugal {

std::vector<CompressorEntry> adtopk_compressor_entries() { return {}; }

}  // namespace frugal
