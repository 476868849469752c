#include "torch/text_corpus.h"

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <random>

namespace frugal {

Result<TextCorpus> load_text_corpus(const std::string& path, int64_t seq_len,
                                    double test_fraction) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return not_found("cannot read text corpus '" + path + "': " + std::strerror(errno) +
                     " (pass a text file with --data PATH)");
  }
  const std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in),
                                   std::istreambuf_iterator<char>()};
  if (in.bad()) return data_loss("error reading text corpus '" + path + "'");

  std::array<int, 256> id{};
  id.fill(-1);
  for (uint8_t b : bytes) id[b] = 0;
  TextCorpus corpus;
  corpus.source = path;
  for (int b = 0; b < 256; ++b) {
    if (id[b] == 0) {
      id[b] = static_cast<int>(corpus.vocab.size());
      corpus.vocab.push_back(static_cast<uint8_t>(b));
    }
  }
  const auto test_bytes = static_cast<size_t>(static_cast<double>(bytes.size()) * test_fraction);
  const size_t train_bytes = bytes.size() - test_bytes;
  corpus.train.reserve(train_bytes);
  corpus.test.reserve(test_bytes);
  for (size_t i = 0; i < bytes.size(); ++i) {
    (i < train_bytes ? corpus.train : corpus.test).push_back(static_cast<uint8_t>(id[bytes[i]]));
  }
  if (corpus.vocab.size() < 2) {
    return invalid_argument("text corpus '" + path + "' has " +
                            std::to_string(corpus.vocab.size()) +
                            " distinct byte(s); a language model needs at least 2");
  }
  if (sequences_in(corpus.train, seq_len) == 0 || sequences_in(corpus.test, seq_len) == 0) {
    const auto needed = static_cast<int64_t>(static_cast<double>(seq_len + 2) / test_fraction);
    return invalid_argument("text corpus '" + path + "' has " + std::to_string(bytes.size()) +
                            " bytes; sequences of " + std::to_string(seq_len) + " need at least " +
                            std::to_string(needed) + " (use a longer file or a smaller --seq-len)");
  }
  return corpus;
}

TextCorpus make_synthetic_text(int64_t train_tokens, int64_t test_tokens, int vocab_size,
                               uint64_t seed) {
  std::mt19937_64 gen(seed ^ 0x7E57C0DE5EEDULL);
  // Each symbol allows 3 next symbols with fixed probabilities (1/2, 1/4, 1/4): 1.5 bits of
  // entropy per symbol, far below log2(vocab_size), so learning shows within a few hundred
  // steps even on small streams.
  std::vector<std::array<uint8_t, 3>> next(static_cast<size_t>(vocab_size));
  for (auto& choices : next) {
    for (auto& c : choices) c = static_cast<uint8_t>(gen() % static_cast<uint64_t>(vocab_size));
  }
  TextCorpus corpus;
  corpus.source = "synthetic";
  for (int t = 0; t < vocab_size; ++t) corpus.vocab.push_back(static_cast<uint8_t>(t));
  uint8_t previous = 0;
  auto emit = [&](std::vector<uint8_t>& out, int64_t count) {
    out.reserve(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      const uint64_t r = gen() % 4;  // choice 0 with probability 1/2, 1 and 2 with 1/4 each
      const size_t choice = r < 2 ? 0 : static_cast<size_t>(r) - 1;
      previous = next[previous][choice];
      out.push_back(previous);
    }
  };
  emit(corpus.train, train_tokens);
  emit(corpus.test, test_tokens);
  return corpus;
}

}  // namespace frugal
