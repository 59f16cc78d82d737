// SPDX-License-Identifier: Apache-2.0
// The corpus of handcrafted bad checkpoint files (tests/data/bad/{gguf,safetensors}/, one file
// per check of a reader, built by gguf_test.cpp and safetensors_test.cpp, see
// support/bad_files.hpp): each file, opened from disk as a user would open it, gives the error
// its `.expect` file names.
#include <catch2/catch.hpp>

#include <filesystem>
#include <set>
#include <string>

#include <moe/io/gguf.hpp>
#include <moe/io/safetensors.hpp>

#include "../support/bad_files.hpp"

namespace {

template <class Open>
void check_corpus(const std::string& reader, const std::string& ext, Open&& open) {
  const auto dir = moe_test::bad_corpus_dir(reader);
  REQUIRE(std::filesystem::is_directory(dir));
  std::set<std::string> files, expects;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const auto p = entry.path();
    if (p.extension() == ext) files.insert(p.stem().string());
    if (p.extension() == ".expect") expects.insert(p.stem().string());
  }
  CHECK(files == expects);  // every file has its expected error, and no expectation is orphaned
  CHECK(files.size() >= 20);
  for (const auto& name : files) {
    const auto path = (dir / (name + ext)).string();
    const auto message = moe_test::read_file(dir / (name + ".expect"));
    INFO(path << ": expecting " << message);
    REQUIRE_FALSE(message.empty());
    CHECK_THROWS_WITH(open(path), Catch::Contains(message));
  }
}

}  // namespace

TEST_CASE("bad-file corpus: every GGUF file gives its error", "[io][gguf][error][corpus]") {
  check_corpus("gguf", ".gguf", [](const std::string& p) { return moe::io::gguf_file(p); });
}

TEST_CASE("bad-file corpus: every safetensors file gives its error", "[io][safetensors][error][corpus]") {
  check_corpus("safetensors", ".safetensors", [](const std::string& p) { return moe::io::safetensors_file(p); });
}
