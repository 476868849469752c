// Placeholder: the quantizer family is being written (issue 3).
#include "compress/registry.h"

namespace frugal {

std::vector<CompressorEntry> quantizer_compressor_entries() { return {}; }

}  // namespace frugal
