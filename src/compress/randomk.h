// Random-k with a shared seed (randomk:density=D,unbiased=B): the registry entry lives in
// randomk.cc and is listed through quantizer_compressor_entries() (registry.cc names one function
// per family). Pure declarations; thread-safe.
#pragma once

#include <vector>

#include "compress/registry.h"

namespace frugal {

// randomk's registry entry (appended to the quantizer family's list).
std::vector<CompressorEntry> randomk_compressor_entries();

}  // namespace frugal
