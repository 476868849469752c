// Parameter shape lists of real models (bench/shapes/*.txt): the loader the compressor and engine
// benchmarks share. Free of LibTorch; pure functions and value types, thread-safe. The file
// format is described in bench/shapes/README.md.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "core/tensor_view.h"

namespace frugal::bench {

struct ParamShape {
  std::string name;  // as model.named_parameters() spells it, e.g. "layer1.0.conv1.weight"
  Shape shape;
};

struct ModelShapes {
  std::string model;               // "resnet50", or the file's path when loaded by path
  std::vector<ParamShape> params;  // in backward order (the order gradients become ready)

  int64_t numel() const;  // total parameters
};

// Parses the text of a shape file. `source` (a path or model name) prefixes every error, with
// the 1-based line: "bench/shapes/vgg16.txt:12: ...".
Result<ModelShapes> parse_model_shapes(std::string_view text, const std::string& source);

// Reads and parses the file at `path`.
Result<ModelShapes> load_model_shapes_file(const std::string& path);

// Where model names are looked up: $FRUGAL_SHAPES_DIR if set, else this checkout's bench/shapes.
std::string default_shapes_dir();

// Loads a model by name ("resnet50" -> <shapes_dir>/resnet50.txt) or, when `model` contains a
// '/' or ends in ".txt", by path. An empty `shapes_dir` means default_shapes_dir(). An unknown
// name is NotFound, listing the models in the directory.
Result<ModelShapes> load_model_shapes(const std::string& model, const std::string& shapes_dir = "");

// The model names in `shapes_dir` (files *.txt, without the extension), sorted.
std::vector<std::string> list_models(const std::string& shapes_dir = "");

}  // namespace frugal::bench
