#include "compress/registry.h"

#include <algorithm>

namespace frugal {
namespace {

std::vector<CompressorEntry> all_entries() {
  std::vector<CompressorEntry> entries;
  for (auto family :
       {dense_compressor_entries, topk_compressor_entries, adtopk_compressor_entries,
        estimator_compressor_entries, quantizer_compressor_entries, sign_compressor_entries,
        powersgd_compressor_entries, memory_compressor_entries}) {
    for (CompressorEntry& e : family()) entries.push_back(std::move(e));
  }
  return entries;
}

std::string valid_names() {
  std::string names;
  for (const CompressorEntry& e : compressor_registry()) {
    names += (names.empty() ? "" : ", ") + e.name;
  }
  return names;
}

std::string valid_keys(const CompressorEntry& entry) {
  if (entry.params.empty()) return "none (" + entry.name + " takes no parameters)";
  std::string keys;
  for (const ParamDoc& p : entry.params) {
    keys += (keys.empty() ? "" : ", ") + p.key + " (default " + p.default_value + ")";
  }
  return keys;
}

const CompressorEntry* find_entry(const std::string& name) {
  const auto& registry = compressor_registry();
  auto it = std::find_if(registry.begin(), registry.end(),
                         [&](const CompressorEntry& e) { return e.name == name; });
  return it == registry.end() ? nullptr : &*it;
}

Result<std::unique_ptr<Compressor>> build(const SpecNode& node, DType value_dtype,
                                          const CompressorContext& context,
                                          std::string_view full_spec) {
  const CompressorEntry* found = find_entry(node.name);
  const std::string where = "compressor spec '" + std::string(full_spec) + "'";
  if (found == nullptr) {
    return invalid_argument(where + ": unknown compressor '" + node.name +
                            "'; valid: " + valid_names());
  }
  const CompressorEntry& entry = *found;
  if (node.inner && entry.inner == InnerSpec::kNone) {
    return invalid_argument(where + ": " + entry.name + " does not wrap another compressor");
  }
  if (!node.inner && entry.inner == InnerSpec::kRequired) {
    return invalid_argument(where + ": " + entry.name + " wraps a compressor, e.g. " +
                            entry.examples.front());
  }
  for (const auto& [key, value] : node.params) {
    bool known = std::any_of(entry.params.begin(), entry.params.end(),
                             [&](const ParamDoc& p) { return p.key == key; });
    if (!known) {
      return invalid_argument(where + ": " + entry.name + " has no parameter '" + key +
                              "'; valid: " + valid_keys(entry));
    }
  }
  ParamReader params(entry.name, node.params);
  BuildRequest request{node, params, context, value_dtype,
                       [&context, full_spec](const SpecNode& inner, DType inner_value_dtype) {
                         return build(inner, inner_value_dtype, context, full_spec);
                       }};
  auto made = entry.factory(request);
  if (!made.is_ok() && made.status().message().find(where) == std::string::npos) {
    return made.status().with_context(where);
  }
  return made;
}

}  // namespace

const std::vector<CompressorEntry>& compressor_registry() {
  static const std::vector<CompressorEntry> entries = all_entries();
  return entries;
}

Result<std::unique_ptr<Compressor>> make_compressor(std::string_view spec,
                                                    const CompressorContext& context) {
  if (context.world_size < 1) {
    return invalid_argument("compressor context: world_size " + std::to_string(context.world_size) +
                            " must be >= 1");
  }
  FRUGAL_ASSIGN_OR_RETURN(SpecNode node, parse_spec(spec));
  return build(node, DType::kF32, context, spec);
}

bool loses_below_full_density(const ParamReader& params) {
  auto density = params.real("density", 0.01, 0.0, 1.0, /*min_exclusive=*/true);
  return density.is_ok() && density.value() < 1.0;
}

std::string memoryless_warning(std::string_view spec) {
  auto parsed = parse_spec(spec);
  if (!parsed.is_ok()) return "";
  // Outside in: a memory anywhere above the lossy compressor keeps what it drops.
  for (const SpecNode* node = &parsed.value(); node != nullptr; node = node->inner.get()) {
    const CompressorEntry* entry = find_entry(node->name);
    if (entry == nullptr || entry->keeps_memory) return "";
    if (entry->loses_unsent && entry->loses_unsent(ParamReader(entry->name, node->params))) {
      return "compressor '" + std::string(spec) + "' keeps no error feedback: what a step does " +
             "not send is dropped for good, which costs accuracy (bare adtopk at density 0.01 " +
             "lost 2.2 points in 3 epochs of mlp); ef(" + std::string(spec) +
             ") carries it over to the next step";
    }
  }
  return "";
}

std::string describe_compressors() {
  std::string text;
  for (const CompressorEntry& e : compressor_registry()) {
    text += "  " + e.name + (e.inner == InnerSpec::kNone ? "" : "(...)") + "  " + e.summary + "\n";
    for (const ParamDoc& p : e.params) {
      text += "      " + p.key + "=" + p.default_value + "  " + p.help + "\n";
    }
  }
  return text;
}

}  // namespace frugal
