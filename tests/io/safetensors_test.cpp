// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/safetensors.hpp: a layer written to safetensors (single file and
// sharded) loads back with the same bits through zero-copy views; every check of the reader.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <moe/io/safetensors.hpp>
#include <moe/moe.hpp>

#include "../support/bad_files.hpp"
#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST_CASE("safetensors: a layer written and loaded back gives the same bits (one file, and sharded)", "[io][safetensors]") {
  moe_test::rng rng(51);
  const index E = 6, d = 40, f = 24;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router = rng.matrix(E, d);
  const auto dir = std::filesystem::temp_directory_path() / "moe_safetensors_test";
  std::filesystem::create_directories(dir);
  moe::io::safetensors_writer one;
  one.metadata("format", "pt");
  one.add("model.layers.0.mlp.gate.weight", moe::view(router));
  one.add("experts.gate", moe::view(w.gate));
  one.add("experts.up", moe::view(w.up));
  one.add("experts.down", moe::view(w.down));
  one.write((dir / "model.safetensors").string());
  const moe::io::safetensors_file file((dir / "model.safetensors").string());
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.tensors().size() == 4);
  CHECK(file.tensor("experts.up").shape == std::vector<std::uint64_t>{static_cast<std::uint64_t>(E * f), static_cast<std::uint64_t>(d)});
  using bank = moe::swiglu_experts<float>;
  moe::layer<moe::top_k<>, bank, moe::device::serial> loaded(
      moe::top_k<>(file.matrix("model.layers.0.mlp.gate.weight"), {.k = 2}),
      bank(file.matrix("experts.gate"), file.matrix("experts.up"), file.matrix("experts.down")));
  moe::layer<moe::top_k<>, bank, moe::device::serial> original(moe::top_k<>(router, {.k = 2}), moe_test::make_bank(w));
  const auto x = rng.matrix(13, d);
  moe::row_matrix<float> y1(13, d), y2(13, d);
  loaded.forward(x, y1);
  original.forward(x, y2);
  CHECK(moe_test::bitwise_equal(y1, y2));
  // Sharded: the router in one shard, the experts in another, and the index.
  moe::io::safetensors_writer s1, s2;
  s1.add("router", moe::view(router));
  s2.add("gate", moe::view(w.gate));
  s2.add("up", moe::view(w.up));
  s2.add("down", moe::view(w.down));
  s1.write((dir / "model-00001-of-00002.safetensors").string());
  s2.write((dir / "model-00002-of-00002.safetensors").string());
  {
    std::ofstream idx(dir / "model.safetensors.index.json");
    idx << R"({"metadata": {"total_size": 0}, "weight_map": {"router": "model-00001-of-00002.safetensors",
            "gate": "model-00002-of-00002.safetensors", "up": "model-00002-of-00002.safetensors",
            "down": "model-00002-of-00002.safetensors"}})";
  }
  const moe::io::safetensors_index index((dir / "model.safetensors.index.json").string());
  CHECK(index.size() == 4);
  moe::layer<moe::top_k<>, bank, moe::device::serial> sharded(
      moe::top_k<>(index.shard_of("router").matrix("router"), {.k = 2}),
      bank(index.shard_of("gate").matrix("gate"), index.shard_of("up").matrix("up"), index.shard_of("down").matrix("down")));
  moe::row_matrix<float> y3(13, d);
  sharded.forward(x, y3);
  CHECK(moe_test::bitwise_equal(y1, y3));
  CHECK_THROWS_WITH(index.shard_of("missing"), Catch::Contains("no tensor named 'missing' in the index"));
  std::filesystem::remove_all(dir);
}

// A file from a header text and data bytes.
std::string file_of(const std::string& header, std::size_t data_bytes) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

// A bad file of the corpus tests/data/bad/safetensors/ (support/bad_files.hpp): its error from the
// bytes, and the corpus file that keeps it.
void expect_error(const std::string& name, const std::string& bytes, const std::string& msg) {
  INFO("expecting: " << msg);
  CHECK_THROWS_WITH(moe::io::safetensors_file::from_bytes(as_bytes(bytes)), Catch::Contains(msg));
  moe_test::check_corpus_file("safetensors", name, ".safetensors", bytes, msg);
}

TEST_CASE("safetensors: every check of the reader", "[io][safetensors][error]") {
  const std::string two = R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}})";
  REQUIRE_NOTHROW(moe::io::safetensors_file::from_bytes(as_bytes(file_of(two, 32))));
  CHECK(moe::io::safetensors_file::from_bytes(as_bytes(file_of(two + "    ", 32))).tensors().size() == 2);  // padded header
  expect_error("01_fewer_than_8", std::string(5, '\0'), "fewer than 8");
  {
    std::string b(8, '\0');
    const std::uint64_t n = 200'000'000;
    std::memcpy(b.data(), &n, 8);
    expect_error("02_exceeds_the_limit_of_100000000_bytes", b, "exceeds the limit of 100000000 bytes");
    const std::uint64_t m = 1000;
    std::memcpy(b.data(), &m, 8);
    expect_error("03_header_length_1000_exceeds_the_0_bytes", b, "header length 1000 exceeds the 0 bytes after it");
  }
  expect_error("04_must_be_a_json_object_starting_with", file_of("[1, 2]", 0), "must be a JSON object starting with '{'");
  expect_error("05_header_truncated_json", file_of("{\"a\": ", 0), "header is not valid JSON");
  expect_error("06_header_invalid_utf8", file_of("{\"a\xff\": {}}", 0), "header is not valid JSON");  // invalid UTF-8
  expect_error("07_tensor_a_must_be_an_object", file_of(R"({"a": 1})", 0), "tensor 'a' must be an object");
  expect_error("08_unknown_dtype_f33", file_of(R"({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}})", 4), "unknown dtype 'F33'");
  expect_error("09_shape_must_hold_non_negative_integers", file_of(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4), "'shape' must hold non-negative integers");
  expect_error("10_shape_overflows_64_bits", file_of(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})", 4), "'shape' overflows 64 bits");
  expect_error("11_byte_size_overflows_64_bits", file_of(R"({"a": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 4]}})", 4), "byte size overflows 64 bits");
  expect_error("12_data_offsets_not_a_pair", file_of(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}})", 8), "'data_offsets' must be [begin, end]");
  expect_error("13_end_0_is_before_begin_8", file_of(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8), "end 0 is before begin 8");
  expect_error("14_bytes_do_not_match_dtype_and_shape", file_of(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}})", 12), "holds 12 bytes, its dtype and shape need 8");
  expect_error("15_tensor_past_the_data_section", file_of(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 4), "ends at 8, past the 4 bytes of the data section");
  expect_error("16_overlaps", file_of(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}})", 6), "overlaps");
  expect_error("17_a_gap_of_4_bytes_before_tensor", file_of(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8), "a gap of 4 bytes before tensor 'a'");
  expect_error("18_the_tensors_cover_4_bytes_of_a", file_of(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8), "the tensors cover 4 bytes of a data section of 8");
  expect_error("19_unknown_field_extra", file_of(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}})", 4), "unknown field 'extra'");
  expect_error("20_metadata_value_of_k_must_be_a", file_of(R"({"__metadata__": {"k": 1}})", 0), "'__metadata__' value of 'k' must be a string");
  CHECK_NOTHROW(moe::io::safetensors_file::from_bytes(as_bytes(file_of(R"({"s": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}})", 4))));
  expect_error("21_unknown_dtype_e8m0", file_of(R"({"s": {"dtype": "E8M0", "shape": [4], "data_offsets": [0, 4]}})", 4), "unknown dtype 'E8M0'");
  expect_error("22_shape_has_an_extent_above_2_63", file_of(R"({"a": {"dtype": "F32", "shape": [18446744073709551615, 0], "data_offsets": [0, 0]}})", 0),
               "'shape' has an extent above 2^63 - 1");
  {  // A deeply nested data_offsets value is refused without copying it (no recursion).
    const std::string deep = std::string(20000, '[') + std::string(20000, ']');
    expect_error("23_deeply_nested_data_offsets", file_of(R"({"a": {"dtype": "F32", "shape": [], "data_offsets": )" + deep + "}}", 4), "'data_offsets' must be [begin, end]");
  }
  // Views: the dtype and rank must fit.
  const auto f = moe::io::safetensors_file::from_bytes(as_bytes(file_of(two, 32)));
  CHECK_THROWS_WITH(f.matrix("b"), Catch::Contains("parameter 'b dtype' must be F32, got BF16"));
  CHECK_THROWS_WITH(f.matrix("c"), Catch::Contains("no tensor named 'c'"));
  moe_test::check_corpus_complete("safetensors");
}

}  // namespace
