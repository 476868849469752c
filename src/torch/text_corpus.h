// A character-level corpus for the language models: any text file becomes a byte vocabulary and
// token streams for training and testing, and fixed-length sequences are cut from them.
// LibTorch-free; pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"

namespace frugal {

struct TextCorpus {
  std::string source;          // file path, or "synthetic"
  std::vector<uint8_t> vocab;  // the distinct bytes of the text, ascending; token t = vocab[t]
  std::vector<uint8_t> train;  // token ids: the first (1 - test_fraction) of the text
  std::vector<uint8_t> test;   // token ids: the rest
  int64_t vocab_size() const { return static_cast<int64_t>(vocab.size()); }
};

// Sequences in a token stream: sequence i is tokens [i*seq_len, i*seq_len + seq_len] (inputs
// and the targets shifted by one), so consecutive sequences share one token.
inline int64_t sequences_in(const std::vector<uint8_t>& tokens, int64_t seq_len) {
  const auto n = static_cast<int64_t>(tokens.size());
  return n > seq_len ? (n - 1) / seq_len : 0;
}

// Reads `path` as bytes. Fails (naming the file) when it is missing or unreadable, or when
// either split is too short to hold one sequence of seq_len + 1 tokens, or the text has fewer
// than two distinct bytes. REQUIRES: 0 < test_fraction < 1, seq_len > 0.
Result<TextCorpus> load_text_corpus(const std::string& path, int64_t seq_len,
                                    double test_fraction = 0.1);

// A text drawn from a fixed random first-order Markov chain over `vocab_size` symbols (seeded), so
// a language model has structure to learn; for benchmarks and tests without files.
TextCorpus make_synthetic_text(int64_t train_tokens, int64_t test_tokens, int vocab_size,
                               uint64_t seed);

}  // namespace frugal
