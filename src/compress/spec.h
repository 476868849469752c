// Compressor spec strings: parsing and typed, validated parameters.
//
//   spec   := name [ '(' spec ')' ] [ ':' params ]
//   params := key '=' value { ',' key '=' value }
//
// e.g. "topk:density=0.01", "ef(dgc:density=0.001)", "fp16(topk:density=0.01)",
// "resireduce(ef(topk:density=0.01)):mode=weighted". Names and keys are [a-z0-9_-]; values are
// anything but ',', '(' and ')'. Pure functions and value types; thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace frugal {

struct SpecNode {
  std::string name;
  std::vector<std::pair<std::string, std::string>> params;  // in the order written
  std::unique_ptr<SpecNode> inner;                          // the wrapped spec, if any
};

// Parses `text`; the error quotes the text and points at the offending character.
Result<SpecNode> parse_spec(std::string_view text);

// Formats a parameter value the way canonical specs print it ("0.01", "4", "true").
std::string format_param(double value);

// Documentation of one parameter of a compressor; the registry rejects keys not listed.
struct ParamDoc {
  std::string key;
  std::string default_value;
  std::string help;  // one line, with units and the valid range
};

// Reads a compressor's parameters with defaults and range checks. Every error names the
// compressor, the key, the value and what is valid.
class ParamReader {
 public:
  ParamReader(std::string compressor, const std::vector<std::pair<std::string, std::string>>& p)
      : compressor_(std::move(compressor)), params_(p) {}

  // A real number in [min, max] (or (min, max] with min_exclusive).
  Result<double> real(std::string_view key, double default_value, double min, double max,
                      bool min_exclusive = false) const;
  Result<int64_t> integer(std::string_view key, int64_t default_value, int64_t min,
                          int64_t max) const;
  Result<bool> boolean(std::string_view key, bool default_value) const;  // true|false|1|0
  Result<std::string> choice(std::string_view key, std::string_view default_value,
                             const std::vector<std::string>& valid) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }

 private:
  const std::string* find(std::string_view key) const;
  Status bad_value(std::string_view key, const std::string& value, const std::string& valid) const;

  std::string compressor_;
  std::vector<std::pair<std::string, std::string>> params_;
};

}  // namespace frugal
