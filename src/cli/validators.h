// Command-line value checks with messages that say what is valid. CLI11's PositiveNumber and
// NonNegativeNumber print the whole double range ("not in range 0.000000 to 1.79e308...").
#pragma once

#include <CLI/CLI.hpp>

#include <cstdlib>
#include <string>

namespace frugal::cli {

// Accepts numbers >= min; `min_text` is how min is shown ("1", "0").
inline CLI::Validator at_least(double min, const std::string& min_text) {
  return CLI::Validator(
      [min, min_text](std::string& value) -> std::string {
        char* end = nullptr;
        const double number = std::strtod(value.c_str(), &end);
        if (end == value.c_str() || *end != '\0' || !(number >= min)) {
          return value + " is invalid; it must be a number >= " + min_text;
        }
        return {};
      },
      ">=" + min_text);
}
inline CLI::Validator positive() { return at_least(1, "1"); }
inline CLI::Validator non_negative() { return at_least(0, "0"); }

}  // namespace frugal::cli
