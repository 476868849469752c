#include "bench/model_shapes.h"

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <unordered_set>

namespace frugal::bench {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

std::vector<std::string_view> split_fields(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space(line[i])) ++i;
    size_t start = i;
    while (i < line.size() && !is_space(line[i])) ++i;
    if (i > start) fields.push_back(line.substr(start, i - start));
  }
  return fields;
}

}  // namespace

int64_t ModelShapes::numel() const {
  int64_t total = 0;
  for (const ParamShape& p : params) total += shape_numel(p.shape);
  return total;
}

Result<ModelShapes> parse_model_shapes(std::string_view text, const std::string& source) {
  ModelShapes model;
  model.model = source;
  std::unordered_set<std::string_view> names;
  int line_number = 0;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    ++line_number;
    line = line.substr(0, line.find('#'));
    std::vector<std::string_view> fields = split_fields(line);
    if (fields.empty()) continue;
    auto error = [&](const std::string& what) {
      return invalid_argument(source + ":" + std::to_string(line_number) + ": " + what +
                              " (expected `name dim0 dim1 ...` with positive integer dims)");
    };
    if (fields.size() < 2) {
      return error("tensor '" + std::string(fields[0]) + "' has no dimensions");
    }
    ParamShape param;
    param.name = std::string(fields[0]);
    int64_t numel = 1;
    for (size_t f = 1; f < fields.size(); ++f) {
      int64_t dim = 0;
      auto [ptr, ec] = std::from_chars(fields[f].data(), fields[f].data() + fields[f].size(), dim);
      if (ec != std::errc() || ptr != fields[f].data() + fields[f].size() || dim <= 0) {
        return error("dimension " + std::to_string(f - 1) + " of '" + param.name + "' is '" +
                     std::string(fields[f]) + "'");
      }
      if (numel > std::numeric_limits<int64_t>::max() / dim) {
        return error("tensor '" + param.name + "' has more than 2^63 elements");
      }
      numel *= dim;
      param.shape.push_back(dim);
    }
    model.params.push_back(std::move(param));
  }
  // Duplicates are checked after parsing: the views must point into the final vector.
  for (size_t i = 0; i < model.params.size(); ++i) {
    if (!names.insert(model.params[i].name).second) {
      return invalid_argument(source + ": tensor '" + model.params[i].name +
                              "' is listed twice; names must be unique");
    }
  }
  if (model.params.empty()) {
    return invalid_argument(source + ": lists no tensors (expected `name dim0 dim1 ...` lines)");
  }
  return model;
}

Result<ModelShapes> load_model_shapes_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open shape file " + path);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return internal_error("cannot read shape file " + path);
  return parse_model_shapes(text.str(), path);
}

std::string default_shapes_dir() {
  if (const char* dir = std::getenv("FRUGAL_SHAPES_DIR"); dir != nullptr && *dir != '\0') {
    return dir;
  }
  return FRUGAL_SOURCE_SHAPES_DIR;  // set by bench/CMakeLists.txt
}

std::vector<std::string> list_models(const std::string& shapes_dir) {
  const std::string dir = shapes_dir.empty() ? default_shapes_dir() : shapes_dir;
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    if (entry.path().extension() == ".txt") names.push_back(entry.path().stem().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

Result<ModelShapes> load_model_shapes(const std::string& model, const std::string& shapes_dir) {
  const bool is_path =
      model.find('/') != std::string::npos || (model.size() > 4 && model.ends_with(".txt"));
  if (is_path) return load_model_shapes_file(model);
  const std::string dir = shapes_dir.empty() ? default_shapes_dir() : shapes_dir;
  const std::string path = dir + "/" + model + ".txt";
  if (!std::filesystem::exists(path)) {
    std::string known;
    for (const std::string& name : list_models(dir)) known += (known.empty() ? "" : ", ") + name;
    return not_found("unknown model '" + model + "': no " + path + "; models in " + dir + ": " +
                     (known.empty() ? "none" : known) + " (or pass a path to a shape file)");
  }
  FRUGAL_ASSIGN_OR_RETURN(ModelShapes shapes, load_model_shapes_file(path));
  shapes.model = model;
  return shapes;
}

}  // namespace frugal::bench
