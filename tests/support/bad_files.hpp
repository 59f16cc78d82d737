// SPDX-License-Identifier: Apache-2.0
#pragma once

// The corpus of handcrafted bad files (tests/data/bad/<reader>/): each check of a reader has one
// file, `<name><ext>`, and beside it `<name>.expect`, the text its error must contain. The reader
// tests build every bad file in memory and check it both ways: its error from the bytes, and
// that the corpus file holds exactly those bytes (so the corpus and the tests cannot drift);
// MOE_WRITE_BAD_CORPUS=1 in the environment (re)writes the corpus instead of comparing. The
// corpus test (tests/io/bad_files_test.cpp) opens every file of the corpus from disk.

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>

namespace moe_test {

inline std::filesystem::path bad_corpus_dir(const std::string& reader) {
  return std::filesystem::path(MOE_TEST_DATA_DIR) / "bad" / reader;
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

/// The names check_corpus_file() has seen, per reader.
inline std::set<std::string>& corpus_names(const std::string& reader) {
  static std::map<std::string, std::set<std::string>> names;
  return names[reader];
}

/// Checks that the corpus file `<reader>/<name><ext>` holds `bytes` and its `.expect` file
/// `message` (or writes both when MOE_WRITE_BAD_CORPUS is set).
inline void check_corpus_file(const std::string& reader, const std::string& name, const std::string& ext,
                              const std::string& bytes, const std::string& message) {
  const auto dir = bad_corpus_dir(reader);
  const auto file = dir / (name + ext), expect = dir / (name + ".expect");
  corpus_names(reader).insert(name);
  if (std::getenv("MOE_WRITE_BAD_CORPUS")) {
    std::filesystem::create_directories(dir);
    std::ofstream(file, std::ios::binary) << bytes;
    std::ofstream(expect, std::ios::binary) << message;
    return;
  }
  INFO("corpus file " << file.string());
  CHECK(read_file(file) == bytes);
  CHECK(read_file(expect) == message);
}

/// After a reader's test has built its whole corpus: the corpus directory holds exactly the
/// files it built (a file that no test generates any more is stale: an error, or removed when
/// MOE_WRITE_BAD_CORPUS is set).
inline void check_corpus_complete(const std::string& reader) {
  const auto dir = bad_corpus_dir(reader);
  const auto& built = corpus_names(reader);
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto stem = entry.path().stem().string();
    if (built.count(stem)) continue;
    if (std::getenv("MOE_WRITE_BAD_CORPUS")) {
      std::filesystem::remove(entry.path());
      continue;
    }
    INFO("stale corpus file " << entry.path().string() << ": no test builds it");
    CHECK(built.count(stem) == 1);
  }
  CHECK(!built.empty());
}

}  // namespace moe_test
