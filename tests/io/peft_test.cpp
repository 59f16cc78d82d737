// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/peft.hpp: PEFT-style adapter files written here (safetensors_writer and
// an adapter_config.json string) load into LoRA-expert banks that give the same bits as the banks
// built from the matrices, in both layouts (stacked, and MoE-PEFT's experts.<e>), from F32 and
// BF16 tensors, with rsLoRA and per-module patterns; every bad file is its error.
#include <catch2/catch.hpp>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <moe/experts/lora.hpp>
#include <moe/io/peft.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
using lora = moe::lora_experts<float>;
namespace io = moe::io;

const std::string module = "base_model.model.model.layers.3.mlp.down_proj";

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

// A layer's output over `bank` (top-2 of a fixed router, on 2 threads).
moe::row_matrix<float> run(const lora& bank, const moe::row_matrix<float>& router_w, const moe::row_matrix<float>& x) {
  moe::layer<moe::top_k<>, lora, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = 2}), bank, moe::device::cpu{2});
  moe::row_matrix<float> y(x.rows(), x.cols());
  layer.forward(x, y);
  return y;
}

// The bf16 bytes of a matrix (round to nearest even), and the matrix of their values.
std::vector<std::byte> bf16_bytes(const moe::row_matrix<float>& m) {
  std::vector<std::byte> out(static_cast<std::size_t>(m.size()) * 2);
  for (index i = 0; i < m.rows(); ++i) {
    for (index j = 0; j < m.cols(); ++j) {
      const auto h = moe::bf16(m(i, j)).bits;
      std::memcpy(out.data() + 2 * (i * m.cols() + j), &h, 2);
    }
  }
  return out;
}
moe::row_matrix<float> bf16_rounded(const moe::row_matrix<float>& m) {
  moe::row_matrix<float> out(m.rows(), m.cols());
  for (index i = 0; i < m.size(); ++i) out.data()[i] = static_cast<float>(moe::bf16(m.data()[i]));
  return out;
}

std::vector<std::uint64_t> shape_of(const moe::row_matrix<float>& m) {
  return {static_cast<std::uint64_t>(m.rows()), static_cast<std::uint64_t>(m.cols())};
}

TEST_CASE("peft: a stacked adapter file loads with the bits of the bank built from its matrices", "[io][peft][lora]") {
  moe_test::rng rng(91);
  const index E = 4, d = 48, r = 8, T = 30;
  const auto a = rng.matrix(E * r, d, 0.2f), b = rng.matrix(E * d, r, 0.3f);
  const auto router_w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  io::safetensors_writer w;
  w.add(module + ".lora_A.weight", moe::view(a));
  w.add(module + ".lora_B.weight", moe::view(b));
  w.add("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight", moe::view(a));  // another module: ignored
  const std::string bytes = w.bytes();
  const auto file = io::safetensors_file::from_bytes(as_bytes(bytes));
  const auto config = io::peft_config::parse(R"({"peft_type": "LORA", "r": 8, "lora_alpha": 16,
      "target_modules": ["q_proj", "down_proj"], "use_rslora": false, "lora_dropout": 0.05})");
  CHECK(config.r == 8);
  CHECK(config.lora_alpha == 16.0);
  CHECK(config.targets(module));
  CHECK(!config.targets("base_model.model.model.layers.3.mlp.up_proj"));
  CHECK(!config.targets("base_model.model.model.layers.3.mlp.xdown_proj"));
  const lora loaded = io::load_lora_experts(file, config, module);
  CHECK(loaded.num_experts() == E);
  CHECK(loaded.scale() == 2.0f);
  CHECK(moe_test::bitwise_equal(run(loaded, router_w, x), run(lora(a, b, {r, 16.0}), router_w, x)));

  // rsLoRA: α/√r; a regular expression as target_modules; the directory loader.
  const auto rs = io::peft_config::parse(R"({"r": 8, "lora_alpha": 16, "use_rslora": true,
      "target_modules": ".*layers\\.[0-9]+\\.mlp\\.down_proj"})");
  CHECK(rs.targets(module));
  const lora loaded_rs = io::load_lora_experts(file, rs, module);
  CHECK(loaded_rs.scale() == static_cast<float>(16.0 / std::sqrt(8.0)));
  CHECK(moe_test::bitwise_equal(run(loaded_rs, router_w, x), run(lora(a, b, {r, 16.0, true}), router_w, x)));
  const auto dir = std::filesystem::temp_directory_path() / "moe_peft_test";
  std::filesystem::create_directories(dir);
  w.write((dir / "adapter_model.safetensors").string());
  std::ofstream((dir / "adapter_config.json").string()) << R"({"r": 8, "lora_alpha": 16, "target_modules": "all-linear"})";
  const lora from_dir = io::load_lora_experts(dir.string(), module);
  CHECK(moe_test::bitwise_equal(run(from_dir, router_w, x), run(lora(a, b, {r, 16.0}), router_w, x)));
  std::filesystem::remove_all(dir);
}

TEST_CASE("peft: MoE-PEFT's per-expert names in BF16, with its router, rank and alpha patterns", "[io][peft][lora]") {
  moe_test::rng rng(92);
  const index E = 3, d = 40, r = 6, T = 21;
  std::vector<moe::row_matrix<float>> as, bs;
  io::safetensors_writer w;
  moe::row_matrix<float> a(E * r, d), b(E * d, r);
  for (index e = 0; e < E; ++e) {
    as.push_back(rng.matrix(r, d, 0.2f));
    bs.push_back(rng.matrix(d, r, 0.3f));
    // Written in reverse order: the loader orders experts by their index, not by the file.
    a.middleRows(e * r, r) = bf16_rounded(as.back());
    b.middleRows(e * d, d) = bf16_rounded(bs.back());
  }
  for (index e = E - 1; e >= 0; --e) {
    const std::string p = module + ".experts." + std::to_string(e);
    w.add(p + ".lora_A.weight", "BF16", shape_of(as[e]), bf16_bytes(as[e]));
    w.add(p + ".lora_B.weight", "BF16", shape_of(bs[e]), bf16_bytes(bs[e]));
  }
  const auto router_w = rng.matrix(E, d);
  w.add(module + ".moe_gate.weight", moe::view(router_w));
  const std::string bytes = w.bytes();
  const auto file = io::safetensors_file::from_bytes(as_bytes(bytes));
  // The pattern for down_proj sets r = 6 and α = 3 (the global r = 8 would not fit the tensors).
  const auto config = io::peft_config::parse(R"({"peft_type": "MIXLORA", "r": 8, "lora_alpha": 16, "num_experts": 3,
      "target_modules": ["down_proj"], "rank_pattern": {"down_proj": 6}, "alpha_pattern": {"mlp.down_proj": 3.0}})");
  const auto lc = config.lora(module);
  CHECK(lc.rank == 6);
  CHECK(lc.alpha == 3.0);
  const lora loaded = io::load_lora_experts(file, config, module);
  CHECK(loaded.num_experts() == E);
  CHECK(loaded.scale() == 0.5f);
  const auto x = rng.matrix(T, d);
  CHECK(moe_test::bitwise_equal(run(loaded, router_w, x), run(lora(a, b, {r, 3.0}), router_w, x)));
  const auto gate = io::peft_router_weights(file, module);
  CHECK(moe_test::bitwise_equal(gate, router_w));
  // bf16 weights from the same file.
  const auto loaded_bf16 = io::load_lora_experts<moe::bf16>(file, config, module);
  CHECK(loaded_bf16.num_experts() == E);
}

TEST_CASE("peft: every bad config and file is an error naming its field or tensor", "[io][peft][lora][error]") {
  moe_test::rng rng(93);
  const index d = 16, r = 4;
  const auto a = rng.matrix(2 * r, d), b = rng.matrix(2 * d, r);
  const auto ok = io::peft_config::parse(R"({"r": 4, "lora_alpha": 8})");
  // Config.
  CHECK_THROWS_WITH(io::peft_config::parse("{\"r\": 4,"), Catch::Contains("is not valid JSON"));
  CHECK_THROWS_WITH(io::peft_config::parse("[1]"), Catch::Contains("must be a JSON object, got array"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"lora_alpha": 8})"), Catch::Contains("has no field 'r'"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4})"), Catch::Contains("has no field 'lora_alpha'"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 0, "lora_alpha": 8})"), Catch::Contains("parameter 'r' must be in [1, 16777216], got 0"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4.5, "lora_alpha": 8})"), Catch::Contains("parameter 'r' must be an integer, got number"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4, "lora_alpha": "8"})"), Catch::Contains("parameter 'lora_alpha' must be a number, got string"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "use_rslora": 1})"),
                    Catch::Contains("parameter 'use_rslora' must be a boolean, got number"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "use_dora": true})"),
                    Catch::Contains("parameter 'use_dora' must be false"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "target_modules": [1]})"),
                    Catch::Contains("parameter 'target_modules' must be a list of strings"));
  CHECK_THROWS_WITH(io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "rank_pattern": {"x": -2}})"),
                    Catch::Contains("parameter 'rank_pattern.x' must be in [1, 16777216], got -2"));
  CHECK_THROWS_WITH(io::peft_config::from_file("/nonexistent/adapter_config.json"), Catch::Contains("cannot open"));

  const auto load = [&](const io::safetensors_writer& w, const io::peft_config& c) {
    const std::string bytes = w.bytes();
    const auto file = io::safetensors_file::from_bytes(as_bytes(bytes));
    return io::load_lora_experts(file, c, module);
  };
  {  // The stacked pair loads; then each of its faults.
    io::safetensors_writer w;
    w.add(module + ".lora_A.weight", moe::view(a));
    w.add(module + ".lora_B.weight", moe::view(b));
    CHECK(load(w, ok).num_experts() == 2);
    CHECK_THROWS_WITH(load(w, io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})")),
                      Catch::Contains("parameter 'module' must be one of the config's target_modules, got '" + module + "'"));
    CHECK_THROWS_WITH(load(w, io::peft_config::parse(R"({"r": 3, "lora_alpha": 8})")),
                      Catch::Contains("parameter '" + module + ".lora_A.weight rows' must be a positive multiple of r = 3, got 8"));
    CHECK_THROWS_WITH(load(w, io::peft_config::parse(R"({"r": 4, "lora_alpha": 8, "num_experts": 3})")),
                      Catch::Contains("parameter 'num_experts (adapter_config.json)' must be equal to 3, got 2"));
    w.add(module + ".lora_magnitude_vector", moe::view(rng.matrix(1, d)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("unknown tensor '" + module + ".lora_magnitude_vector'"));
  }
  {
    io::safetensors_writer w;
    w.add(module + ".lora_A.weight", moe::view(a));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("missing tensor '" + module + ".lora_B.weight'"));
    w.add(module + ".lora_B.weight", moe::view(rng.matrix(2 * d, r + 1)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("parameter '" + module + ".lora_B.weight cols' must be equal to 4, got 5"));
  }
  {
    io::safetensors_writer w;
    w.add(module + ".lora_A.default.weight", moe::view(a));  // PEFT's in-memory name, not a saved one
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("unknown tensor '" + module + ".lora_A.default.weight'"));
  }
  {
    io::safetensors_writer w;
    w.add("other.lora_A.weight", moe::view(a));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("no LoRA tensor of module '" + module + "'"));
  }
  {  // Per-expert faults: a gap, a bad shape, both layouts, a bad dtype, a bad index.
    io::safetensors_writer w;
    w.add(module + ".experts.0.lora_A.weight", moe::view(a.topRows(r)));
    w.add(module + ".experts.0.lora_B.weight", moe::view(b.topRows(d)));
    w.add(module + ".experts.2.lora_A.weight", moe::view(a.topRows(r)));
    w.add(module + ".experts.2.lora_B.weight", moe::view(b.topRows(d)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("missing tensor '" + module + ".experts.1.lora_A.weight'"));
    w.add(module + ".experts.1.lora_A.weight", moe::view(a.topRows(r)));
    w.add(module + ".experts.1.lora_B.weight", moe::view(b.topRows(d - 1)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("parameter '" + module + ".experts.1.lora_B.weight rows' must be equal to 16, got 15"));
  }
  {
    io::safetensors_writer w;
    w.add(module + ".experts.0.lora_A.weight", moe::view(a.topRows(r)));
    w.add(module + ".experts.0.lora_B.weight", moe::view(b.topRows(d)));
    w.add(module + ".lora_A.weight", moe::view(a));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("has both stacked"));
  }
  {
    io::safetensors_writer w;
    w.add(module + ".experts.01.lora_A.weight", moe::view(a.topRows(r)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("unknown tensor '" + module + ".experts.01.lora_A.weight'"));
  }
  {
    io::safetensors_writer w;
    const std::vector<std::byte> i32(static_cast<std::size_t>(r * d) * 4);
    w.add(module + ".experts.0.lora_A.weight", "I32", {static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(d)}, i32);
    w.add(module + ".experts.0.lora_B.weight", moe::view(b.topRows(d)));
    CHECK_THROWS_WITH(load(w, ok), Catch::Contains("parameter '" + module + ".experts.0.lora_A.weight dtype' must be F32, BF16 or F16, got I32"));
  }
  {
    io::safetensors_writer w;
    w.add(module + ".lora_A.weight", moe::view(a));
    w.add(module + ".lora_B.weight", moe::view(b));
    const std::string bytes = w.bytes();
    const auto file = io::safetensors_file::from_bytes(as_bytes(bytes));
    CHECK_THROWS_WITH(io::peft_router_weights(file, module), Catch::Contains("missing tensor '" + module + ".moe_gate.weight'"));
  }
}

}  // namespace
