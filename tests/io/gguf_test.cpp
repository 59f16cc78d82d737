// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/gguf.hpp: a layer written to GGUF (quantized experts, fp32 router,
// metadata of every type) loads back bitwise equal; every check of the reader on a bad file.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <moe/experts/quantized.hpp>
#include <moe/io/gguf.hpp>
#include <moe/moe.hpp>

#include "../support/bad_files.hpp"
#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/quantized.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
namespace fm = moe::formats;

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

using moe_test::quantised;

TEST_CASE("gguf: a layer written to a file loads back with the same bits", "[io][gguf]") {
  moe_test::rng rng(41);
  const index E = 4, d = 256, f = 256;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router = rng.matrix(E, d);
  using F = fm::q4_k;
  const auto g = quantised<F>(w.gate), u = quantised<F>(w.up), dn = quantised<F>(w.down);
  moe::io::gguf_writer out;
  out.add_string("general.architecture", "olmoe");
  out.add_uint("olmoe.expert_count", E);
  out.add_uint("olmoe.expert_used_count", 2);
  out.add_float("olmoe.expert_weights_scale", 1.5f);
  out.add_bool("olmoe.expert_weights_norm", true);
  out.add_int("test.negative", -7);
  out.add_uint64("test.big", std::uint64_t{1} << 40);
  std::vector<std::byte> rb(static_cast<std::size_t>(E * d) * 4);
  std::memcpy(rb.data(), router.data(), rb.size());
  out.add_tensor("blk.0.ffn_gate_inp.weight", 0, {static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(E)}, rb);
  const auto dims_gu = std::vector<std::uint64_t>{static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(f), static_cast<std::uint64_t>(E)};
  const auto dims_dn = std::vector<std::uint64_t>{static_cast<std::uint64_t>(f), static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(E)};
  out.add_tensor("blk.0.ffn_gate_exps.weight", F::ggml_type, dims_gu, g);
  out.add_tensor("blk.0.ffn_up_exps.weight", F::ggml_type, dims_gu, u);
  out.add_tensor("blk.0.ffn_down_exps.weight", F::ggml_type, dims_dn, dn);
  const auto path = (std::filesystem::temp_directory_path() / "moe_gguf_test.gguf").string();
  out.write(path);

  const moe::io::gguf_file file(path);
  CHECK(file.version() == 3);
  CHECK(file.get_string("general.architecture") == "olmoe");
  CHECK(file.get_int("olmoe.expert_count") == E);
  CHECK(file.get_float("olmoe.expert_weights_scale") == 1.5);
  CHECK(file.get_bool("olmoe.expert_weights_norm"));
  CHECK(file.get_int("test.negative") == -7);
  CHECK(file.get_int("test.big") == (std::int64_t{1} << 40));
  CHECK_THROWS_WITH(file.get_int("olmoe.missing"), Catch::Contains("missing metadata key 'olmoe.missing'"));
  CHECK_THROWS_WITH(file.get_int("general.architecture"), Catch::Contains("'general.architecture' must be an integer"));
  const auto& gi = file.tensor("blk.0.ffn_gate_exps.weight");
  CHECK(gi.type == F::ggml_type);
  CHECK(gi.dims == dims_gu);
  CHECK(gi.bytes == g.size());
  CHECK(file.data(gi).size() == g.size());
  CHECK(std::memcmp(file.data(gi).data(), g.data(), g.size()) == 0);
  CHECK(file.data_offset() % 32 == 0);

  using bank = moe::gated_mlp_experts<F>;
  const moe::swiglu_shape shape{E, d, f};
  const auto& ri = file.tensor("blk.0.ffn_gate_inp.weight");
  const auto router_view = moe::map(reinterpret_cast<const float*>(file.data(ri).data()), E, d);
  moe::layer<moe::top_k<>, bank, moe::device::serial> loaded(
      moe::top_k<>(router_view, {.k = 2}),
      bank(file.data(gi), file.data(file.tensor("blk.0.ffn_up_exps.weight")), file.data(file.tensor("blk.0.ffn_down_exps.weight")), shape));
  moe::layer<moe::top_k<>, bank, moe::device::serial> original(moe::top_k<>(router, {.k = 2}), bank(g, u, dn, shape));
  const auto x = rng.matrix(11, d);
  moe::row_matrix<float> y1(11, d), y2(11, d);
  loaded.forward(x, y1);
  original.forward(x, y2);
  CHECK(moe_test::bitwise_equal(y1, y2));
  std::filesystem::remove(path);
}

// A small valid file and mutations of it, one per check.
std::string small_file() {
  moe::io::gguf_writer w;
  w.add_string("general.name", "tiny");
  w.add_uint("general.alignment", 32);
  std::vector<std::byte> t(64 * 4);
  w.add_tensor("a", 0, {64}, t);
  std::vector<std::byte> q(2 * 34);
  w.add_tensor("b", 8, {64}, q);
  return w.bytes();
}

// A bad file of the corpus tests/data/bad/gguf/ (support/bad_files.hpp): its error from the
// bytes, and the corpus file that keeps it.
void expect_error(const std::string& name, const std::string& bytes, const std::string& msg) {
  INFO("expecting: " << msg);
  CHECK_THROWS_WITH(moe::io::gguf_file::from_bytes(as_bytes(bytes)), Catch::Contains(msg));
  moe_test::check_corpus_file("gguf", name, ".gguf", bytes, msg);
}

template <class T>
void put(std::string& s, std::size_t at, T v) {
  std::memcpy(s.data() + at, &v, sizeof v);
}

TEST_CASE("gguf: every check of the reader names the field and the offset", "[io][gguf][error]") {
  const std::string good = small_file();
  REQUIRE_NOTHROW(moe::io::gguf_file::from_bytes(as_bytes(good)));
  const auto parsed = moe::io::gguf_file::from_bytes(as_bytes(good));
  CHECK(parsed.tensors().size() == 2);
  // Offsets in the small file: 0 magic, 4 version, 8 tensor count, 16 kv count, 24 first key.
  expect_error("01_magic_at_byte_offset_0_needs_4", good.substr(0, 3), "magic at byte offset 0: needs 4 bytes");
  {
    auto b = good;
    b[0] = 'X';
    expect_error("02_magic_at_byte_offset_0_expected_gguf", b, "magic at byte offset 0: expected \"GGUF\"");
  }
  {
    auto b = good;
    put<std::uint32_t>(b, 4, 7);
    expect_error("03_version_must_be_2_or_3", b, "version at byte offset 4: must be 2 or 3, got 7");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, 16, std::uint64_t{1} << 60);  // a kv count no file could hold
    expect_error("04_metadata_kv_count_at_byte_offset_16", b, "metadata_kv_count at byte offset 16");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, 8, std::uint64_t{1} << 62);  // a tensor count no file could hold
    expect_error("05_tensor_count_beyond_the_file", b, "tensor_count");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, 24, std::uint64_t{1} << 50);  // key length beyond the file
    expect_error("06_key_longer_than_the_file", b, "metadata key at byte offset 24: string of 1125899906842624 bytes, longer than");
  }
  {
    auto b = good;
    // The first value's type follows the key "general.name" (8 + 12 bytes from offset 24).
    put<std::uint32_t>(b, 44, 99);
    expect_error("07_metadata_general_name_at_byte_offset_44", b, "metadata 'general.name' at byte offset 44: unknown value type 99");
  }
  {  // Arrays: nested, element type unknown, a count beyond the file.
    moe::io::gguf_writer w;
    w.add_string("k", "v");
    std::string b = w.bytes();
    // Rewrite the value as an array: type 9, element type 9.
    const std::size_t type_at = 24 + 8 + 1;
    put<std::uint32_t>(b, type_at, 9);
    put<std::uint32_t>(b, type_at + 4, 9);
    expect_error("08_arrays_of_arrays_are_not_supported", b, "arrays of arrays are not supported");
    put<std::uint32_t>(b, type_at + 4, 77);
    expect_error("09_unknown_array_element_type_77", b, "unknown array element type 77");
    b.append(16, '\0');
    put<std::uint32_t>(b, type_at + 4, 4);
    put<std::uint64_t>(b, type_at + 8, std::uint64_t{1} << 40);
    expect_error("10_array_of_1099511627776_elements_cannot_fit", b, "array of 1099511627776 elements cannot fit");
  }
  {
    auto b = good;
    const std::size_t key2 = 24 + 8 + 12 + 4 + 8 + 4;  // second key: "general.alignment"
    put<std::uint32_t>(b, key2 + 8 + 17 + 4, 48);      // alignment 48: not a power of two
    expect_error("11_general_alignment_must_be_a_power_of", b, "'general.alignment' must be a power of two");
  }
  // Tensor infos start after the two key/values.
  const std::size_t t0 = 24 + (8 + 12 + 4 + 8 + 4) + (8 + 17 + 4 + 4);
  {
    auto b = good;
    put<std::uint32_t>(b, t0 + 9, 5);  // n_dims of tensor "a"
    expect_error("12_n_dims_out_of_range", b, "tensor 'a' at byte offset " + std::to_string(t0 + 9) + ": n_dims must be in [1, 4], got 5");
  }
  {
    auto b = good;
    put<std::uint32_t>(b, t0 + 9 + 4 + 8, 1234);  // type of "a"
    expect_error("13_unknown_tensor_type_1234", b, "unknown tensor type 1234");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, t0 + 9 + 4, 60);  // 60 values of F32 fine, but then the byte size differs: next test
    put<std::uint32_t>(b, t0 + 9 + 4 + 8, 8);  // Q8_0 with a row of 60
    expect_error("14_row_length_60_is_not_a_multiple", b, "row length 60 is not a multiple of the Q8_0 block (32)");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, t0 + 9 + 4 + 8 + 4, 16);  // offset of "a" not aligned
    expect_error("15_offset_16_is_not_a_multiple_of", b, "offset 16 is not a multiple of the alignment 32");
  }
  {
    auto b = good;
    put<std::uint64_t>(b, t0 + 9 + 4, std::uint64_t{1} << 40);  // "a" far larger than the file
    expect_error("16_tensor_outside_the_data_section", b, "tensor 'a' (offset 0, 4398046511104 bytes) lies outside the data section");
  }
  {
    auto b = good;
    const std::size_t t1 = t0 + 9 + 4 + 8 + 4 + 8;  // tensor "b"
    put<std::uint64_t>(b, t1 + 9 + 4 + 8 + 4, 0);  // "b" at offset 0: overlaps "a"
    expect_error("17_tensors_overlap", b, "overlap");
  }
  {
    auto b = good;
    const std::size_t t1 = t0 + 9 + 4 + 8 + 4 + 8;
    b[t1 + 8] = 'a';  // "b" renamed "a"
    expect_error("18_duplicate_tensor_name", b, "duplicate tensor name");
  }
  {
    auto b = good;
    expect_error("19_truncated_inside_a_tensor", b.substr(0, b.size() - 30), "lies outside the data section");  // truncated inside "b"
  }
  {
    auto b = good;
    const std::size_t t0d = t0 + 9 + 4;
    put<std::uint64_t>(b, t0d, 0);  // dimension 0: an empty tensor is fine
    CHECK_NOTHROW(moe::io::gguf_file::from_bytes(as_bytes(b)));
  }
  {
    moe::io::gguf_writer w;
    w.add_uint("k", 1);
    w.add_uint("k", 2);
    expect_error("20_duplicate_key", w.bytes(), "duplicate key");
  }
  {
    moe::io::gguf_writer w;
    w.add_string("k", "v");
    std::string b = w.bytes();
    put<std::uint32_t>(b, 24 + 9, 7);  // bool
    b[24 + 9 + 4] = 3;
    expect_error("21_bool_must_be_0_or_1", b, "a bool must be 0 or 1, got 3");
  }
  moe_test::check_corpus_complete("gguf");
}

TEST_CASE("gguf: a file that does not exist is an error naming it", "[io][gguf][error]") {
  CHECK_THROWS_WITH(moe::io::gguf_file("/nonexistent/model.gguf"), Catch::Contains("cannot open '/nonexistent/model.gguf'"));
}

}  // namespace

namespace {

TEST_CASE("gguf: arrays are stored compactly, a data section past the end of the file is an error", "[io][gguf][error]") {
  // An array of u8 and one of strings, written by hand (the writer has no arrays).
  std::string b;
  const auto put32 = [&](std::uint32_t v) { b.append(reinterpret_cast<const char*>(&v), 4); };
  const auto put64 = [&](std::uint64_t v) { b.append(reinterpret_cast<const char*>(&v), 8); };
  const auto str = [&](const std::string& s) { put64(s.size()); b += s; };
  put32(0x46554747u); put32(3); put64(0); put64(2);
  str("a.bytes"); put32(9); put32(0); put64(3); b += std::string("\x01\x02\x03", 3);
  str("a.names"); put32(9); put32(8); put64(2); str("x"); str("yz");
  const auto f = moe::io::gguf_file::from_bytes(std::as_bytes(std::span(b.data(), b.size())));
  CHECK(f.find("a.bytes")->size() == 3);
  CHECK(std::get<std::vector<std::uint64_t>>(f.find("a.bytes")->value)[2] == 3);
  CHECK(std::get<std::vector<std::string>>(f.find("a.names")->value)[1] == "yz");
  // One empty tensor whose aligned data section would start past the end of the file.
  std::string t;
  const auto tput32 = [&](std::uint32_t v) { t.append(reinterpret_cast<const char*>(&v), 4); };
  const auto tput64 = [&](std::uint64_t v) { t.append(reinterpret_cast<const char*>(&v), 8); };
  tput32(0x46554747u); tput32(3); tput64(1); tput64(0);
  tput64(1); t += "a"; tput32(1); tput64(0); tput32(0); tput64(0);
  REQUIRE(t.size() % 32 != 0);
  CHECK_THROWS_WITH(moe::io::gguf_file::from_bytes(std::as_bytes(std::span(t.data(), t.size()))),
                    Catch::Contains("past the end of the"));
}

}  // namespace
