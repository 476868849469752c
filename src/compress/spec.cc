#include "compress/spec.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace frugal {
namespace {

// A recursive-descent parser over the grammar in spec.h. Hand-written because the grammar is
// five lines and no Debian library parses nested name(inner):key=value specs.
class SpecParser {
 public:
  explicit SpecParser(std::string_view text) : text_(text) {}

  Result<SpecNode> parse() {
    FRUGAL_ASSIGN_OR_RETURN(SpecNode node, parse_node());
    if (pos_ != text_.size()) return error("unexpected '" + std::string(1, text_[pos_]) + "'");
    return node;
  }

 private:
  static bool is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  }

  Result<SpecNode> parse_node() {
    SpecNode node;
    node.name = take_name();
    if (node.name.empty()) return error("expected a compressor name");
    if (peek('(')) {
      ++pos_;
      FRUGAL_ASSIGN_OR_RETURN(SpecNode inner, parse_node());
      node.inner = std::make_unique<SpecNode>(std::move(inner));
      if (!peek(')')) return error("expected ')'");
      ++pos_;
    }
    if (peek(':')) {
      ++pos_;
      do {
        if (peek(',')) ++pos_;
        std::string key = take_name();
        if (key.empty()) return error("expected a parameter name");
        if (!peek('=')) return error("expected '=' after '" + key + "'");
        ++pos_;
        size_t start = pos_;
        while (pos_ < text_.size() && text_[pos_] != ',' && text_[pos_] != '(' &&
               text_[pos_] != ')') {
          ++pos_;
        }
        if (pos_ == start) return error("expected a value for '" + key + "'");
        for (const auto& [existing, value] : node.params) {
          if (existing == key) return error("parameter '" + key + "' is given twice");
        }
        node.params.emplace_back(std::move(key), std::string(text_.substr(start, pos_ - start)));
      } while (peek(','));
    }
    return node;
  }

  std::string take_name() {
    size_t start = pos_;
    while (pos_ < text_.size() && is_name_char(text_[pos_])) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  bool peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  Status error(const std::string& what) const {
    return invalid_argument("compressor spec '" + std::string(text_) + "': " + what +
                            " at character " + std::to_string(pos_ + 1) +
                            " (expected e.g. topk:density=0.01 or ef(dgc:density=0.001))");
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

Result<SpecNode> parse_spec(std::string_view text) { return SpecParser(text).parse(); }

std::string format_param(double value) {
  if (std::isfinite(value) && value == std::round(value) && std::fabs(value) < 1e15) {
    return std::to_string(static_cast<int64_t>(value));
  }
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.6g", value);
  return buffer;
}

const std::string* ParamReader::find(std::string_view key) const {
  for (const auto& [k, v] : params_) {
    if (k == key) return &v;
  }
  return nullptr;
}

Status ParamReader::bad_value(std::string_view key, const std::string& value,
                              const std::string& valid) const {
  return invalid_argument(compressor_ + ": " + std::string(key) + "=" + value +
                          " is invalid; valid: " + valid);
}

Result<double> ParamReader::real(std::string_view key, double default_value, double min, double max,
                                 bool min_exclusive) const {
  const std::string* text = find(key);
  const std::string range = format_param(min) + (min_exclusive ? " < " : " <= ") +
                            std::string(key) + " <= " + format_param(max);
  if (text == nullptr) return default_value;
  double value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (ec != std::errc() || end != text->data() + text->size() || !std::isfinite(value)) {
    return bad_value(key, *text, "a number with " + range);
  }
  if (value > max || value < min || (min_exclusive && value == min)) {
    return bad_value(key, *text, range);
  }
  return value;
}

Result<int64_t> ParamReader::integer(std::string_view key, int64_t default_value, int64_t min,
                                     int64_t max) const {
  const std::string* text = find(key);
  if (text == nullptr) return default_value;
  int64_t value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  const std::string range = "an integer with " + std::to_string(min) + " <= " + std::string(key) +
                            " <= " + std::to_string(max);
  if (ec != std::errc() || end != text->data() + text->size() || value < min || value > max) {
    return bad_value(key, *text, range);
  }
  return value;
}

Result<bool> ParamReader::boolean(std::string_view key, bool default_value) const {
  const std::string* text = find(key);
  if (text == nullptr) return default_value;
  if (*text == "true" || *text == "1") return true;
  if (*text == "false" || *text == "0") return false;
  return bad_value(key, *text, "true, false, 1 or 0");
}

Result<std::string> ParamReader::choice(std::string_view key, std::string_view default_value,
                                        const std::vector<std::string>& valid) const {
  const std::string* text = find(key);
  if (text == nullptr) return std::string(default_value);
  for (const std::string& v : valid) {
    if (*text == v) return v;
  }
  std::string list;
  for (const std::string& v : valid) list += (list.empty() ? "" : ", ") + v;
  return bad_value(key, *text, list);
}

}  // namespace frugal
