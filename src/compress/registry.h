// The compressor registry: spec strings -> validated Compressor objects. Each family of
// compressors lists its own entries (name, parameters with defaults, examples, factory) next to
// its implementation; registry.cc only concatenates the lists, so adding a compressor never
// touches a chain of ifs. Read-only after static initialization; thread-safe.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "compress/compressor.h"
#include "compress/spec.h"

namespace frugal {

// What a factory gets: its parsed node, its validated parameters, the job context, and a way to
// build nested specs (for decorators).
struct BuildRequest {
  const SpecNode& node;
  const ParamReader& params;
  const CompressorContext& context;
  // The element type values are sent as: f16 or bf16 when wrapped as fp16(...) or bf16(...).
  // Factories that cannot honour anything but f32 reject other values.
  DType value_dtype = DType::kF32;
  std::function<Result<std::unique_ptr<Compressor>>(const SpecNode&, DType value_dtype)> build;
};

using CompressorFactory = std::function<Result<std::unique_ptr<Compressor>>(const BuildRequest&)>;

enum class InnerSpec { kNone, kRequired, kOptional };

struct CompressorEntry {
  std::string name;
  std::string summary;           // one line for --help and docs
  std::vector<ParamDoc> params;  // every key the factory reads; others are rejected
  InnerSpec inner = InnerSpec::kNone;
  std::vector<std::string> examples;  // specs that tests and docs exercise
  CompressorFactory factory;
  // Set where the compressor, as its parameters configure it, is biased and remembers nothing:
  // what a step does not send is lost for good unless a memory wraps it (memoryless_warning).
  std::function<bool(const ParamReader&)> loses_unsent = nullptr;
  // ef, momentum, resireduce: carries what the inner compressor did not send to the next step.
  bool keeps_memory = false;
};

// loses_unsent for compressors that send everything only at density 1.
bool loses_below_full_density(const ParamReader& params);

// Every registered compressor, in documentation order.
const std::vector<CompressorEntry>& compressor_registry();

// Parses and validates `spec` and builds the compressor. Errors name the unknown compressor or
// key with the valid ones, or the out-of-range value with its range.
Result<std::unique_ptr<Compressor>> make_compressor(std::string_view spec,
                                                    const CompressorContext& context);

// A one-line warning for a spec that loses what it does not send (a loses_unsent compressor
// with no keeps_memory wrapper around it), naming the fix; empty for other or invalid specs.
std::string memoryless_warning(std::string_view spec);

// A human-readable list of compressors and their parameters (for `--help` and docs).
std::string describe_compressors();

// The builtin families' entry lists (one per source file; see registry.cc).
std::vector<CompressorEntry> dense_compressor_entries();      // none, fp16, bf16
std::vector<CompressorEntry> topk_compressor_entries();       // topk, randomk, threshold
std::vector<CompressorEntry> adtopk_compressor_entries();     // adtopk
std::vector<CompressorEntry> estimator_compressor_entries();  // dgc, gaussiank, redsync, sidco
std::vector<CompressorEntry> quantizer_compressor_entries();  // qsgd, terngrad
std::vector<CompressorEntry> sign_compressor_entries();       // signsgd, ef-signsgd, onebit
std::vector<CompressorEntry> powersgd_compressor_entries();   // powersgd
std::vector<CompressorEntry> memory_compressor_entries();     // ef, momentum, resireduce

}  // namespace frugal
