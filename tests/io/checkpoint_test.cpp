// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/checkpoint.hpp: checkpoints written here in each family's naming and
// layout (Hugging Face: per-expert tensors, Granite's fused input_linear, Llama 4's input-major
// fused gate_up_proj, DBRX's w1/v1/w2; GGUF: llama.cpp's stacked ffn_*_exps), in F32, BF16 and
// F16, single-file, sharded and GGUF, load back through model_config into banks and routers that
// compute bitwise what the same weights give when built from the matrices; errors name the tensor.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <moe/io/checkpoint.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/quantized.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
namespace fs = std::filesystem;
namespace mio = moe::io;

constexpr index E = 8, d = 24, f = 12, layers = 2, moe_layer = 1;

/// The weights of one MoE layer as matrices: router [E × d], gate/up [E·f × d], down [E·d × f],
/// shared [fs × d] / [d × fs].
struct layer_weights {
  moe::row_matrix<float> router, gate, up, down, sgate, sup, sdown;
  std::vector<float> bias, shared_gate;
};

layer_weights random_weights(std::uint64_t seed, index fs = f) {
  moe_test::rng rng(seed);
  layer_weights w;
  w.router = rng.matrix(E, d, 0.5f);
  w.gate = rng.matrix(E * f, d, 0.3f);
  w.up = rng.matrix(E * f, d, 0.3f);
  w.down = rng.matrix(E * d, f, 0.3f);
  w.sgate = rng.matrix(fs, d, 0.3f);
  w.sup = rng.matrix(fs, d, 0.3f);
  w.sdown = rng.matrix(d, fs, 0.3f);
  for (index e = 0; e < E; ++e) w.bias.push_back(rng.uniform(-0.2f, 0.2f));
  for (index i = 0; i < d; ++i) w.shared_gate.push_back(rng.uniform());
  return w;
}

/// Values rounded through bf16 or f16 (what a BF16 / F16 file holds, read back as float).
moe::row_matrix<float> rounded(const moe::row_matrix<float>& m, moe::element_type t) {
  moe::row_matrix<float> r = m;
  for (index i = 0; i < r.size(); ++i) {
    float& v = r.data()[i];
    if (t == moe::element_type::bf16) v = static_cast<float>(moe::bf16(v));
    if (t == moe::element_type::f16) v = static_cast<float>(moe::f16(v));
  }
  return r;
}

/// Bytes of `values` (row-major) in element type t.
std::vector<std::byte> encode(const std::vector<float>& values, moe::element_type t) {
  std::vector<std::byte> b(values.size() * moe::element_bytes(t));
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (t == moe::element_type::f32) {
      std::memcpy(b.data() + 4 * i, &values[i], 4);
    } else {
      const std::uint16_t bits = t == moe::element_type::bf16 ? moe::bf16(values[i]).bits : moe::f16(values[i]).bits;
      std::memcpy(b.data() + 2 * i, &bits, 2);
    }
  }
  return b;
}

std::vector<float> flat(const moe::row_matrix<float>& m) { return {m.data(), m.data() + m.size()}; }

/// Adds a tensor to a safetensors writer (values in t, shape outermost first).
void add(mio::safetensors_writer& w, const std::string& name, const std::vector<float>& values,
         std::vector<std::uint64_t> shape, moe::element_type t = moe::element_type::f32) {
  const auto bytes = encode(values, t);
  w.add(name, moe::element_name(t), std::move(shape), bytes);
}

std::vector<float> rows(const moe::row_matrix<float>& m, index r0, index n) {
  return {m.data() + r0 * m.cols(), m.data() + (r0 + n) * m.cols()};
}

std::string replace_e(std::string s, index e) {
  s.replace(s.find("{e}"), 3, std::to_string(e));
  return s;
}

/// Writes layer `moe_layer`'s experts in the layout of `names`, in element type t.
void add_experts(mio::safetensors_writer& w, const mio::moe_tensor_names& n, const layer_weights& lw, moe::element_type t) {
  using L = mio::expert_layout;
  const auto u = [](index v) { return static_cast<std::uint64_t>(v); };
  switch (n.layout) {
    case L::separate:
      for (index e = 0; e < E; ++e) {
        add(w, replace_e(n.gate, e), rows(lw.gate, e * f, f), {u(f), u(d)}, t);
        add(w, replace_e(n.up, e), rows(lw.up, e * f, f), {u(f), u(d)}, t);
        add(w, replace_e(n.down, e), rows(lw.down, e * d, d), {u(d), u(f)}, t);
      }
      break;
    case L::fused_halves: {  // [E, 2f, d]: gate rows, then up rows
      std::vector<float> gu;
      for (index e = 0; e < E; ++e) {
        for (const auto& v : {rows(lw.gate, e * f, f), rows(lw.up, e * f, f)}) gu.insert(gu.end(), v.begin(), v.end());
      }
      add(w, n.gate, gu, {u(E), u(2 * f), u(d)}, t);
      add(w, n.down, flat(lw.down), {u(E), u(d), u(f)}, t);
      break;
    }
    case L::fused_halves_t: {  // [E, d, 2f] (input-major) and down [E, f, d]
      std::vector<float> gu, dn;
      for (index e = 0; e < E; ++e) {
        for (index k = 0; k < d; ++k) {
          for (index j = 0; j < 2 * f; ++j) gu.push_back(j < f ? lw.gate(e * f + j, k) : lw.up(e * f + j - f, k));
        }
        for (index c = 0; c < f; ++c) {
          for (index r = 0; r < d; ++r) dn.push_back(lw.down(e * d + r, c));
        }
      }
      add(w, n.gate, gu, {u(E), u(d), u(2 * f)}, t);
      add(w, n.down, dn, {u(E), u(f), u(d)}, t);
      break;
    }
    case L::dbrx: {  // w1, v1 [E·f, d]; w2 [E·f, d], each expert's [f, d] input-major
      std::vector<float> dn;
      for (index e = 0; e < E; ++e) {
        for (index c = 0; c < f; ++c) {
          for (index r = 0; r < d; ++r) dn.push_back(lw.down(e * d + r, c));
        }
      }
      add(w, n.gate, flat(lw.gate), {u(E * f), u(d)}, t);
      add(w, n.up, flat(lw.up), {u(E * f), u(d)}, t);
      add(w, n.down, dn, {u(E * f), u(d)}, t);
      break;
    }
    default: FAIL("layout not written by this test");
  }
}

/// A model_config for the test's shapes.
moe::model_config test_config(const std::string& type) {
  moe::model_config c;
  c.model_type = type;
  c.hidden = d;
  c.moe_intermediate = f;
  c.layers = layers;
  c.experts = E;
  c.experts_per_token = 2;
  c.moe_layer = {false, true};
  return c;
}

/// Forward of a batch through `bank` with the router `w` (top-2, softmax), serial device.
template <class Bank>
moe::row_matrix<float> forward(const moe::row_matrix<float>& router, Bank bank, const moe::row_matrix<float>& x,
                               const moe::shared_experts<Bank>* shared = nullptr) {
  using layer_type = moe::layer<moe::top_k<>, Bank, moe::device::serial>;
  moe::row_matrix<float> y(x.rows(), x.cols());
  if (shared) {
    layer_type(moe::top_k<>(router, {.k = 2}), std::move(bank), *shared).forward(x, y);
  } else {
    layer_type(moe::top_k<>(router, {.k = 2}), std::move(bank)).forward(x, y);
  }
  return y;
}

fs::path temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("moe_checkpoint_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// A published config from tests/data/hf-configs shrunk to the test's shapes (only the keys it
/// already has are changed), written as `dir/config.json`.
void write_shrunk_config(const std::string& published, const fs::path& dir) {
  std::ifstream in(std::string(MOE_TEST_DATA_DIR) + "/hf-configs/" + published);
  REQUIRE(in);
  auto j = nlohmann::json::parse(in);
  const auto set = [&](const char* key, nlohmann::json v) {
    if (j.contains(key)) j[key] = std::move(v);
  };
  set("hidden_size", d);
  set("intermediate_size", f);
  set("moe_intermediate_size", f);
  set("shared_expert_intermediate_size", f);
  set("num_local_experts", E);
  set("num_experts", E);
  set("n_routed_experts", E);
  set("num_experts_per_tok", 2);
  set("experts_per_token", 2);
  set("num_hidden_layers", layers);
  set("first_k_dense_replace", 1);
  set("n_shared_experts", 1);
  set("n_group", 2);
  set("topk_group", 1);
  set("mlp_only_layers", nlohmann::json::array({0}));
  set("decoder_sparse_step", 1);
  std::ofstream(dir / "config.json") << j.dump(2);
}

TEST_CASE("checkpoint: each Hugging Face family's naming loads back bitwise", "[io][checkpoint]") {
  struct family {
    const char* type;
    const char* published;  // config in tests/data/hf-configs, or null: the config is built here
  };
  const family families[] = {
      {"mixtral", "mixtral-8x7b.json"}, {"olmoe", "olmoe-1b-7b.json"},       {"qwen3_moe", "qwen3-30b-a3b.json"},
      {"qwen2_moe", "qwen1.5-moe-a2.7b.json"}, {"qwen3_next", "qwen3-next-80b-a3b.json"}, {"deepseek_v3", "deepseek-v3.json"},
      {"kimi_k2", "kimi-k2.json"},      {"granitemoe", nullptr},            {"llama4_text", nullptr},
      {"dbrx", nullptr},                {"phimoe", nullptr},                {"ernie4_5_moe", nullptr},
      {"hunyuan_v1_moe", nullptr},      {"glm4_moe", nullptr},              {"longcat_flash", nullptr},
  };
  std::uint64_t seed = 100;
  for (const auto& fam : families) {
    DYNAMIC_SECTION(fam.type) {
      const auto dir = temp_dir(fam.type);
      moe::model_config cfg;
      if (fam.published) {
        write_shrunk_config(fam.published, dir);
        cfg = moe::model_config::from_file((dir / "config.json").string());
      } else {
        cfg = test_config(fam.type);
      }
      CHECK(cfg.model_type == fam.type);
      CHECK(cfg.experts == E);
      CHECK(cfg.hidden == d);
      CHECK(cfg.moe_intermediate == f);
      REQUIRE(cfg.is_moe_layer(moe_layer));
      const std::string prefix = std::string(fam.type) == "dbrx" ? "transformer.blocks." : "model.layers.";
      const auto names = mio::hf_tensor_names(fam.type, moe_layer, prefix);
      const index fs_ = cfg.shared_intermediate;
      const auto lw = random_weights(++seed, std::max<index>(fs_, 1));
      mio::safetensors_writer w;
      add(w, names.router, flat(lw.router), {static_cast<std::uint64_t>(E), static_cast<std::uint64_t>(d)});
      if (cfg.selection_bias) add(w, names.selection_bias, lw.bias, {static_cast<std::uint64_t>(E)});
      add_experts(w, names, lw, moe::element_type::f32);
      if (cfg.shared_experts > 0) {
        add(w, names.shared_gate, flat(lw.sgate), {static_cast<std::uint64_t>(fs_), static_cast<std::uint64_t>(d)});
        add(w, names.shared_up, flat(lw.sup), {static_cast<std::uint64_t>(fs_), static_cast<std::uint64_t>(d)});
        add(w, names.shared_down, flat(lw.sdown), {static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(fs_)});
        if (cfg.shared_gate) add(w, names.shared_expert_gate, lw.shared_gate, {1, static_cast<std::uint64_t>(d)});
      }
      w.write((dir / "model.safetensors").string());

      const mio::checkpoint ckpt(dir.string());
      if (fam.published) CHECK(ckpt.config().experts == cfg.experts);
      const auto r = mio::load_router(ckpt, cfg, moe_layer);
      CHECK(moe_test::bitwise_equal(r.weight, lw.router));
      CHECK(r.selection_bias == (cfg.selection_bias ? lw.bias : std::vector<float>{}));
      const auto x = moe_test::rng(++seed).matrix(37, d);
      using bank = moe::swiglu_experts<float>;
      const auto expect = forward(lw.router, bank(lw.gate, lw.up, lw.down), x);
      CHECK(moe_test::bitwise_equal(forward(r.weight, mio::load_experts(ckpt, cfg, moe_layer), x), expect));
      // The same bits on 1 or 2 packing threads.
      CHECK(moe_test::bitwise_equal(forward(r.weight, mio::load_experts(ckpt, cfg, moe_layer, 1), x), expect));
      const auto shared = mio::load_shared_experts(ckpt, cfg, moe_layer);
      CHECK(shared.has_value() == (cfg.shared_experts > 0));
      if (shared) {
        CHECK(shared->gated() == cfg.shared_gate);
        const auto ref_shared = cfg.shared_gate ? moe::shared_experts<bank>(bank(lw.sgate, lw.sup, lw.sdown), lw.shared_gate)
                                                : moe::shared_experts<bank>(bank(lw.sgate, lw.sup, lw.sdown));
        CHECK(moe_test::bitwise_equal(forward(r.weight, mio::load_experts(ckpt, cfg, moe_layer), x, &*shared),
                                      forward(lw.router, bank(lw.gate, lw.up, lw.down), x, &ref_shared)));
      }
      // In place, where the family's rows are contiguous: the bits of an in-place bank over the
      // same arrays; input-major layouts are refused.
      using L = mio::expert_layout;
      using mapped = moe::mapped_swiglu_experts;
      const auto src = [](const moe::row_matrix<float>& m, index experts, index r, index c) {
        return moe::weight_source::stacked(moe::element_type::f32, m.data(), experts, r, c);
      };
      if (names.layout == L::separate || names.layout == L::stacked || names.layout == L::fused_halves) {
        const mapped direct(src(lw.gate, E, f, d), src(lw.up, E, f, d), src(lw.down, E, d, f));
        const auto in_place = forward(r.weight, mio::map_experts(ckpt, cfg, moe_layer), x);
        CHECK(moe_test::bitwise_equal(in_place, forward(lw.router, direct, x)));
        CHECK((in_place - expect).norm() <= 1e-5 * expect.norm());
        CHECK(moe_test::bitwise_equal(forward(r.weight, mio::map_experts(ckpt, cfg, moe_layer, {.populate = false}), x), in_place));
        const auto mshared = mio::map_shared_experts(ckpt, cfg, moe_layer);
        CHECK(mshared.has_value() == (cfg.shared_experts > 0));
        if (mshared) {
          const mapped sdirect(src(lw.sgate, 1, fs_, d), src(lw.sup, 1, fs_, d), src(lw.sdown, 1, d, fs_));
          const auto ref = cfg.shared_gate ? moe::shared_experts<mapped>(sdirect, lw.shared_gate) : moe::shared_experts<mapped>(sdirect);
          CHECK(moe_test::bitwise_equal(forward(r.weight, mio::map_experts(ckpt, cfg, moe_layer), x, &*mshared),
                                        forward(lw.router, direct, x, &ref)));
        }
      } else {
        CHECK_THROWS_WITH(mio::map_experts(ckpt, cfg, moe_layer), Catch::Contains("input-major"));
      }
      fs::remove_all(dir);
    }
  }
}

TEST_CASE("checkpoint: BF16 and F16 tensors load as bf16 or fp32 banks", "[io][checkpoint]") {
  for (const auto t : {moe::element_type::bf16, moe::element_type::f16}) {
    DYNAMIC_SECTION(moe::element_name(t)) {
      const auto dir = temp_dir(std::string("half_") + moe::element_name(t));
      const auto cfg = test_config("olmoe");
      const auto names = mio::hf_tensor_names("olmoe", moe_layer);
      const auto lw = random_weights(7);
      mio::safetensors_writer w;
      add(w, names.router, flat(lw.router), {E, d}, t);
      add_experts(w, names, lw, t);
      w.write((dir / "model.safetensors").string());
      const mio::checkpoint ckpt((dir / "model.safetensors").string());
      const auto r = mio::load_router(ckpt, cfg, moe_layer);
      CHECK(moe_test::bitwise_equal(r.weight, rounded(lw.router, t)));
      const auto g = rounded(lw.gate, t), u = rounded(lw.up, t), dn = rounded(lw.down, t);
      const auto x = moe_test::rng(8).matrix(19, d);
      CHECK(moe_test::bitwise_equal(forward(r.weight, mio::load_experts<float>(ckpt, cfg, moe_layer), x),
                                    forward(r.weight, moe::swiglu_experts<float>(g, u, dn), x)));
      CHECK(moe_test::bitwise_equal(forward(r.weight, mio::load_experts<moe::bf16>(ckpt, cfg, moe_layer), x),
                                    forward(r.weight, moe::swiglu_experts<moe::bf16>(g, u, dn), x)));
      // In place: the file's half-precision rows widened exactly, so the bits of fp32 rows of the
      // same values; the bank keeps the file mapped after the checkpoint object is gone.
      const auto src = [](const moe::row_matrix<float>& m, index experts, index r, index c) {
        return moe::weight_source::stacked(moe::element_type::f32, m.data(), experts, r, c);
      };
      const moe::mapped_swiglu_experts direct(src(g, E, f, d), src(u, E, f, d), src(dn, E, d, f));
      const auto want = forward(r.weight, direct, x);
      CHECK(moe_test::bitwise_equal(forward(r.weight, mio::map_experts(ckpt, cfg, moe_layer), x), want));
      auto orphan = [&] {
        const mio::checkpoint own((dir / "model.safetensors").string());
        return mio::map_experts(own, cfg, moe_layer, {.populate = true, .threads = 2});
      }();
      CHECK(orphan.weight_type() == t);
      CHECK(moe_test::bitwise_equal(forward(r.weight, std::move(orphan), x), want));
      fs::remove_all(dir);
    }
  }
}

TEST_CASE("checkpoint: a sharded checkpoint and a GGUF file load through the same calls", "[io][checkpoint]") {
  const auto lw = random_weights(11);
  const auto x = moe_test::rng(12).matrix(29, d);
  using bank = moe::swiglu_experts<float>;
  const auto expect = forward(lw.router, bank(lw.gate, lw.up, lw.down), x);
  SECTION("sharded safetensors") {
    const auto dir = temp_dir("sharded");
    const auto names = mio::hf_tensor_names("mixtral", moe_layer);
    mio::safetensors_writer a, b;
    add(a, names.router, flat(lw.router), {E, d});
    add_experts(b, names, lw, moe::element_type::f32);
    a.write((dir / "model-00001-of-00002.safetensors").string());
    b.write((dir / "model-00002-of-00002.safetensors").string());
    nlohmann::json index;
    index["weight_map"][names.router] = "model-00001-of-00002.safetensors";
    const mio::safetensors_file second((dir / "model-00002-of-00002.safetensors").string());
    for (const auto& t : second.tensors()) {
      index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
    }
    std::ofstream(dir / "model.safetensors.index.json") << index.dump();
    const mio::checkpoint ckpt(dir.string());
    const auto cfg = test_config("mixtral");
    CHECK(moe_test::bitwise_equal(forward(mio::load_router(ckpt, cfg, moe_layer).weight, mio::load_experts(ckpt, cfg, moe_layer), x),
                                  expect));
    fs::remove_all(dir);
  }
  SECTION("GGUF, F32 and Q8_0 experts") {
    const auto dir = temp_dir("gguf");
    const auto u = [](index v) { return static_cast<std::uint64_t>(v); };
    for (const bool quantized : {false, true}) {
      mio::gguf_writer w;
      w.add_string("general.architecture", "olmoe");
      w.add_uint("olmoe.block_count", layers);
      w.add_uint("olmoe.embedding_length", d);
      w.add_uint("olmoe.feed_forward_length", f);
      w.add_uint("olmoe.expert_count", E);
      w.add_uint("olmoe.expert_used_count", 2);
      const auto n = mio::gguf_tensor_names(moe_layer);
      const auto router = encode(flat(lw.router), moe::element_type::f32);
      w.add_tensor(n.router, 0, {u(d), u(E)}, router);
      // (d = 24 is not a whole Q8_0 block: the quantized file uses d' = 32 columns below.)
      if (!quantized) {
        const auto g = encode(flat(lw.gate), moe::element_type::f32), up = encode(flat(lw.up), moe::element_type::f32),
                   dn = encode(flat(lw.down), moe::element_type::f32);
        w.add_tensor(n.gate, 0, {u(d), u(f), u(E)}, g);
        w.add_tensor(n.up, 0, {u(d), u(f), u(E)}, up);
        w.add_tensor(n.down, 0, {u(f), u(d), u(E)}, dn);
        w.write((dir / "f32.gguf").string());
        const mio::checkpoint ckpt((dir / "f32.gguf").string());
        const auto cfg = ckpt.config();
        CHECK(cfg.model_type == "olmoe");
        CHECK(moe_test::bitwise_equal(forward(mio::load_router(ckpt, cfg, moe_layer).weight, mio::load_experts(ckpt, cfg, moe_layer), x),
                                      expect));
        CHECK_THROWS_WITH(mio::load_quantized_experts<moe::formats::q8_0>(ckpt, cfg, moe_layer),
                          Catch::Contains("'blk.1.ffn_gate_exps.weight' type") && Catch::Contains("Q8_0"));
        // In place from the GGUF file's stacked rows.
        const moe::mapped_swiglu_experts direct(moe::weight_source::stacked(moe::element_type::f32, lw.gate.data(), E, f, d),
                                                moe::weight_source::stacked(moe::element_type::f32, lw.up.data(), E, f, d),
                                                moe::weight_source::stacked(moe::element_type::f32, lw.down.data(), E, d, f));
        CHECK(moe_test::bitwise_equal(forward(lw.router, mio::map_experts(ckpt, cfg, moe_layer), x), forward(lw.router, direct, x)));
      }
    }
    // Q8_0 experts at d = f = 32 (whole blocks).
    moe_test::rng rng(13);
    const index dq = 32, fq = 32;
    const auto gate = rng.matrix(E * fq, dq, 0.3f), up = rng.matrix(E * fq, dq, 0.3f), down = rng.matrix(E * dq, fq, 0.3f);
    const auto router = rng.matrix(E, dq, 0.5f);
    namespace fm = moe::formats;
    const auto gb = moe_test::quantised<fm::q8_0>(gate), ub = moe_test::quantised<fm::q8_0>(up), db = moe_test::quantised<fm::q8_0>(down);
    mio::gguf_writer w;
    w.add_string("general.architecture", "olmoe");
    w.add_uint("olmoe.block_count", layers);
    w.add_uint("olmoe.embedding_length", dq);
    w.add_uint("olmoe.feed_forward_length", fq);
    w.add_uint("olmoe.expert_count", E);
    w.add_uint("olmoe.expert_used_count", 2);
    const auto n = mio::gguf_tensor_names(moe_layer);
    w.add_tensor(n.router, 0, {u(dq), u(E)}, encode(flat(router), moe::element_type::f32));
    w.add_tensor(n.gate, fm::q8_0::ggml_type, {u(dq), u(fq), u(E)}, gb);
    w.add_tensor(n.up, fm::q8_0::ggml_type, {u(dq), u(fq), u(E)}, ub);
    w.add_tensor(n.down, fm::q8_0::ggml_type, {u(fq), u(dq), u(E)}, db);
    w.write((dir / "q8.gguf").string());
    const mio::checkpoint ckpt((dir / "q8.gguf").string());
    const auto cfg = ckpt.config();
    const auto xq = moe_test::rng(14).matrix(9, dq);
    using qbank = moe::gated_mlp_experts<fm::q8_0>;
    CHECK(moe_test::bitwise_equal(forward(mio::load_router(ckpt, cfg, moe_layer).weight, mio::load_quantized_experts<fm::q8_0>(ckpt, cfg, moe_layer), xq),
                                  forward(router, qbank(gb, ub, db, moe::swiglu_shape{E, dq, fq}), xq)));
    CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer),
                      Catch::Contains("'blk.1.ffn_gate_exps.weight' dtype") && Catch::Contains("F32, BF16 or F16") && Catch::Contains("Q8_0"));
    CHECK_THROWS_WITH(mio::map_experts(ckpt, cfg, moe_layer),
                      Catch::Contains("'blk.1.ffn_gate_exps.weight' dtype") && Catch::Contains("Q8_0"));
    fs::remove_all(dir);
  }
}

TEST_CASE("checkpoint: missing, misshapen and mistyped tensors name themselves", "[io][checkpoint][error]") {
  const auto dir = temp_dir("errors");
  const auto cfg = test_config("qwen3_moe");
  const auto names = mio::hf_tensor_names("qwen3_moe", moe_layer);
  const auto lw = random_weights(21);
  const auto write = [&](auto&& edit) {
    mio::safetensors_writer w;
    add(w, names.router, flat(lw.router), {E, d});
    edit(w);
    w.write((dir / "model.safetensors").string());
    return mio::checkpoint((dir / "model.safetensors").string());
  };
  SECTION("an expert tensor missing") {
    const auto ckpt = write([&](mio::safetensors_writer& w) {
      for (index e = 0; e + 1 < E; ++e) {
        add(w, replace_e(names.gate, e), rows(lw.gate, e * f, f), {f, d});
        add(w, replace_e(names.up, e), rows(lw.up, e * f, f), {f, d});
        add(w, replace_e(names.down, e), rows(lw.down, e * d, d), {d, f});
      }
    });
    CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer), Catch::Contains("model.layers.1.mlp.experts.7.gate_proj.weight"));
  }
  SECTION("a transposed expert tensor") {
    const auto ckpt = write([&](mio::safetensors_writer& w) {
      for (index e = 0; e < E; ++e) {
        add(w, replace_e(names.gate, e), rows(lw.gate, e * f, f), {d, f});  // [d, f] instead of [f, d]
        add(w, replace_e(names.up, e), rows(lw.up, e * f, f), {f, d});
        add(w, replace_e(names.down, e), rows(lw.down, e * d, d), {d, f});
      }
    });
    CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer),
                      Catch::Contains("tensor 'model.layers.1.mlp.experts.0.gate_proj.weight' shape") &&
                          Catch::Contains("[12, 24]") && Catch::Contains("[24, 12]"));
  }
  SECTION("experts of mixed dtypes, an integer tensor") {
    const auto ckpt = write([&](mio::safetensors_writer& w) {
      for (index e = 0; e < E; ++e) {
        const auto t = e == 3 ? moe::element_type::bf16 : moe::element_type::f32;
        add(w, replace_e(names.gate, e), rows(lw.gate, e * f, f), {f, d}, t);
        add(w, replace_e(names.up, e), rows(lw.up, e * f, f), {f, d}, t);
        add(w, replace_e(names.down, e), rows(lw.down, e * d, d), {d, f}, t);
      }
    });
    CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer), Catch::Contains("expert 3's tensors have dtypes BF16/BF16/BF16"));
    const std::vector<std::byte> ints(static_cast<std::size_t>(E * d * 4));
    const auto bad = write([&](mio::safetensors_writer& w) { w.add("model.layers.0.mlp.gate.weight", "I32", {E, d}, ints); });
    auto cfg0 = cfg;
    cfg0.moe_layer = {true, true};
    CHECK_THROWS_WITH(mio::load_router(bad, cfg0, 0), Catch::Contains("'model.layers.0.mlp.gate.weight' dtype") && Catch::Contains("I32"));
  }
  SECTION("a layer that is not a MoE layer, a family without known naming, gpt-oss experts") {
    const auto ckpt = write([](mio::safetensors_writer&) {});
    CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, 0), Catch::Contains("parameter 'layer' must be a MoE layer of the model, got 0"));
    CHECK_THROWS_WITH(mio::hf_tensor_names("not_a_family", 1), Catch::Contains("no tensor naming is known for the model family 'not_a_family'"));
    auto oss = test_config("gpt_oss");
    CHECK_THROWS_WITH(mio::load_experts(ckpt, oss, moe_layer), Catch::Contains("no router tensor 'model.layers.1.mlp.router.weight'"));
    const auto with_router = write([&](mio::safetensors_writer& w) { add(w, "model.layers.1.mlp.router.weight", flat(lw.router), {E, d}); });
    CHECK_THROWS_WITH(mio::load_experts(with_router, oss, moe_layer), Catch::Contains("have biases and a clamped SwiGLU"));
  }
  CHECK_THROWS_WITH(mio::checkpoint(dir.string() + "/nothing_here"), Catch::Contains("cannot open"));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: with_router builds the router each published config asks for", "[io][checkpoint][presets]") {
  struct expected {
    const char* published;
    const char* router;
    int k;
  };
  const expected cases[] = {
      {"mixtral-8x7b.json", "top_k<softmax>", 2},      {"olmoe-1b-7b.json", "top_k<softmax>", 2},
      {"qwen3-30b-a3b.json", "top_k<softmax>", 2},     {"qwen1.5-moe-a2.7b.json", "top_k<softmax>", 2},
      {"qwen3-next-80b-a3b.json", "top_k<softmax>", 2}, {"deepseek-v3.json", "group_limited<sigmoid>", 2},
      {"kimi-k2.json", "group_limited<sigmoid>", 2},   {"gpt-oss-20b.json", "topk_softmax", 2},
  };
  const auto lw = random_weights(31);
  const auto x = moe_test::rng(32).matrix(17, d);
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.published) {
      const auto dir = temp_dir("router");
      write_shrunk_config(c.published, dir);
      const auto cfg = moe::model_config::from_file((dir / "config.json").string());
      mio::router_weights rw;
      rw.weight = lw.router;
      if (cfg.selection_bias) rw.selection_bias = lw.bias;
      if (cfg.router_bias) rw.logit_bias = lw.bias;
      const std::string kind = mio::with_router(cfg, rw, [&](const auto& r) -> std::string {
        using R = std::remove_cvref_t<decltype(r)>;
        CHECK(r.num_experts() == E);
        CHECK(r.max_slots() == c.k);
        // The same plan as the router built by hand from the config's fields.
        moe::routing_plan got, want;
        moe::workspace ws;
        r.route(moe::view(x), {}, got, ws);
        if constexpr (std::is_same_v<R, moe::top_k<moe::softmax_gate>>) {
          moe::top_k<moe::softmax_gate>(lw.router, cfg.top_k()).route(moe::view(x), {}, want, ws);
          CHECK(moe_test::bitwise_equal(moe::map(got.all_weights().data(), 17, c.k), moe::map(want.all_weights().data(), 17, c.k)));
          return "top_k<softmax>";
        } else if constexpr (std::is_same_v<R, moe::group_limited<moe::sigmoid_gate>>) {
          auto o = cfg.group_limited();
          o.selection_bias = lw.bias;
          moe::group_limited<moe::sigmoid_gate>(lw.router, o).route(moe::view(x), {}, want, ws);
          CHECK(moe_test::bitwise_equal(moe::map(got.all_weights().data(), 17, c.k), moe::map(want.all_weights().data(), 17, c.k)));
          return "group_limited<sigmoid>";
        } else if constexpr (std::is_same_v<R, moe::topk_softmax>) {
          auto o = cfg.topk_softmax();
          o.logit_bias = lw.bias;
          moe::topk_softmax(lw.router, o).route(moe::view(x), {}, want, ws);
          CHECK(moe_test::bitwise_equal(moe::map(got.all_weights().data(), 17, c.k), moe::map(want.all_weights().data(), 17, c.k)));
          return "topk_softmax";
        } else {
          return "other";
        }
      });
      CHECK(kind == c.router);
      fs::remove_all(dir);
    }
  }
}

TEST_CASE("checkpoint: a gpt-oss GGUF layer loads with its router bias, expert biases and clamped SwiGLU", "[io][checkpoint]") {
  const auto dir = temp_dir("gpt_oss");
  namespace fm = moe::formats;
  const auto u = [](index v) { return static_cast<std::uint64_t>(v); };
  moe_test::rng rng(51);
  const index dq = 32, fq = 32;
  const auto gate = rng.matrix(E * fq, dq, 0.3f), up = rng.matrix(E * fq, dq, 0.3f), down = rng.matrix(E * dq, fq, 0.3f);
  const auto router = rng.matrix(E, dq, 0.5f);
  std::vector<float> rb, bg, bu, bd;
  for (index i = 0; i < E; ++i) rb.push_back(rng.uniform(-0.3f, 0.3f));
  for (index i = 0; i < E * fq; ++i) bg.push_back(rng.uniform(-0.3f, 0.3f)), bu.push_back(rng.uniform(-0.3f, 0.3f));
  for (index i = 0; i < E * dq; ++i) bd.push_back(rng.uniform(-0.3f, 0.3f));
  const auto gb = moe_test::quantised<fm::mxfp4>(gate), ub = moe_test::quantised<fm::mxfp4>(up), db = moe_test::quantised<fm::mxfp4>(down);
  mio::gguf_writer w;
  w.add_string("general.architecture", "gpt-oss");
  w.add_uint("gpt-oss.block_count", layers);
  w.add_uint("gpt-oss.embedding_length", dq);
  w.add_uint("gpt-oss.expert_feed_forward_length", fq);
  w.add_uint("gpt-oss.expert_count", E);
  w.add_uint("gpt-oss.expert_used_count", 2);
  const auto n = mio::gguf_tensor_names(moe_layer);
  w.add_tensor(n.router, 0, {u(dq), u(E)}, encode(flat(router), moe::element_type::f32));
  w.add_tensor(n.router_bias, 0, {u(E)}, encode(rb, moe::element_type::f32));
  w.add_tensor(n.gate, fm::mxfp4::ggml_type, {u(dq), u(fq), u(E)}, gb);
  w.add_tensor(n.up, fm::mxfp4::ggml_type, {u(dq), u(fq), u(E)}, ub);
  w.add_tensor(n.down, fm::mxfp4::ggml_type, {u(fq), u(dq), u(E)}, db);
  // llama.cpp: ffn_{gate,up}_exps.bias {n_ff, n_expert}, ffn_down_exps.bias {n_embd, n_expert}.
  w.add_tensor(n.gate_bias, 0, {u(fq), u(E)}, encode(bg, moe::element_type::f32));
  w.add_tensor(n.up_bias, 0, {u(fq), u(E)}, encode(bu, moe::element_type::f32));
  w.add_tensor(n.down_bias, 0, {u(dq), u(E)}, encode(bd, moe::element_type::f32));
  w.write((dir / "oss.gguf").string());
  const mio::checkpoint ckpt((dir / "oss.gguf").string());
  const auto cfg = ckpt.config();
  REQUIRE(cfg.gating == moe::model_gating::topk_then_softmax);
  const auto r = mio::load_router(ckpt, cfg, moe_layer);
  CHECK(r.logit_bias == rb);
  using qbank = moe::gated_mlp_experts<fm::mxfp4, moe::act::clamped_swiglu>;
  auto want_bank = qbank(gb, ub, db, moe::swiglu_shape{E, dq, fq});
  want_bank.set_biases(bg, bu, bd);
  auto got_bank = mio::load_quantized_experts<fm::mxfp4, moe::act::clamped_swiglu>(ckpt, cfg, moe_layer);
  CHECK(got_bank.has_biases());
  const auto x = moe_test::rng(52).matrix(13, dq);
  const auto run = [&](qbank bank) {
    return mio::with_router(cfg, r, [&](auto router) {
      moe::layer<decltype(router), qbank, moe::device::serial> layer(std::move(router), std::move(bank));
      moe::row_matrix<float> y(x.rows(), dq);
      layer.forward(x, y);
      return y;
    });
  };
  CHECK(moe_test::bitwise_equal(run(std::move(got_bank)), run(std::move(want_bank))));
  CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer), Catch::Contains("have biases and a clamped SwiGLU"));
  CHECK_THROWS_WITH((mio::load_quantized_experts<fm::mxfp4>(ckpt, cfg, moe_layer)),
                    Catch::Contains("parameter 'Activation' must be act::clamped_swiglu (gpt-oss's experts), got silu"));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: with_router covers Llama 4, Phi-3.5-MoE, Granite, LongCat-Flash and refuses what it cannot route",
          "[io][checkpoint][presets]") {
  moe_test::rng rng(61);
  const auto x = rng.matrix(11, d);
  const index Z = 3;
  const auto w = rng.matrix(E, d), wz = rng.matrix(E + Z, d);
  std::vector<float> bz;
  for (index i = 0; i < E + Z; ++i) bz.push_back(rng.uniform(-0.1f, 0.1f));
  const auto kind = [&](const moe::model_config& cfg, const mio::router_weights& rw) {
    return mio::with_router(cfg, rw, [&](const auto& r) -> std::string {
      using R = std::remove_cvref_t<decltype(r)>;
      moe::routing_plan plan;
      moe::workspace ws;
      r.route(moe::view(x), {}, plan, ws);
      CHECK(plan.num_experts() == E);
      if constexpr (std::is_same_v<R, moe::weigh_input<moe::topk_sigmoid>>) {
        CHECK(plan.input_weighted());
        CHECK(plan.weight(0, 0) > 0.0f);
        return "weigh_input<topk_sigmoid>";
      } else if constexpr (std::is_same_v<R, moe::sparsemixer>) {
        return "sparsemixer";
      } else if constexpr (std::is_same_v<R, moe::topk_softmax>) {
        return "topk_softmax";
      } else if constexpr (std::is_same_v<R, moe::identity_experts<moe::top_k<moe::softmax_gate>>>) {
        // The same plan as the wrapper built by hand over E + Z columns.
        const moe::identity_experts<moe::top_k<>> want(moe::top_k<>(wz, {.k = cfg.experts_per_token, .route_scale = cfg.route_scale, .selection_bias = bz}), Z);
        moe::routing_plan p2;
        want.route(moe::view(x), {}, p2, ws);
        for (index t = 0; t < x.rows(); ++t) CHECK(plan.identity_weight(t) == p2.identity_weight(t));
        return "identity_experts<top_k>";
      } else {
        return "other";
      }
    });
  };
  mio::router_weights rw;
  rw.weight = w;
  auto llama4 = test_config("llama4_text");
  llama4.gating = moe::model_gating::sigmoid_topk;
  llama4.weight_on_input = true;
  llama4.experts_per_token = 1;
  CHECK(kind(llama4, rw) == "weigh_input<topk_sigmoid>");
  auto phi = test_config("phimoe");
  phi.gating = moe::model_gating::sparsemixer;
  phi.jitter_eps = 0.01f;
  CHECK(kind(phi, rw) == "sparsemixer");
  auto granite = test_config("granitemoe");
  granite.gating = moe::model_gating::topk_then_softmax;
  CHECK(kind(granite, rw) == "topk_softmax");
  auto longcat = test_config("longcat_flash");
  longcat.identity_experts = Z;
  longcat.selection_bias = true;
  longcat.route_scale = 6.0f;
  mio::router_weights rz;
  rz.weight = wz;
  rz.selection_bias = bz;
  CHECK(kind(longcat, rz) == "identity_experts<top_k>");
  auto dbrx = test_config("dbrx");
  dbrx.renormalize = true;
  dbrx.renormalize_p = 2.0f;
  CHECK_THROWS_WITH(kind(dbrx, rw), Catch::Contains("parameter 'cfg.renormalize_p' must be 1 (division by the sum), got 2"));
  // A logit bias on a router that does not add one is refused, not dropped.
  auto biased = rw;
  biased.logit_bias.assign(static_cast<std::size_t>(E), 0.5f);
  CHECK_THROWS_WITH(kind(phi, biased), Catch::Contains("parameter 'rw.logit_bias' must be empty for this gating"));
  // ERNIE 4.5's floor on the renormalisation sum reaches top_k: a selection bias that picks
  // experts of tiny probability gives weights p / floor instead of p / sum.
  auto ernie = test_config("ernie4_5_moe");
  ernie.renormalize = true;
  ernie.renormalize_min = 0.5f;  // large, so that it binds here
  ernie.selection_bias = true;
  mio::router_weights re;
  re.weight = moe::row_matrix<float>::Zero(E, d);
  re.weight(0, 0) = 30.0f;  // expert 0 takes almost all the probability of a token with x_0 = 1
  re.selection_bias.assign(static_cast<std::size_t>(E), 0.0f);
  re.selection_bias[0] = -10.0f;  // ... but the bias chooses two others
  moe::row_matrix<float> xe = moe::row_matrix<float>::Zero(1, d);
  xe(0, 0) = 1.0f;
  mio::with_router(ernie, re, [&](const auto& r) {
    moe::routing_plan plan;
    moe::workspace ws;
    r.route(moe::view(xe), {}, plan, ws);
    CHECK(plan.expert(0, 0) != 0);
    const double p_other = 1.0 / (std::exp(30.0) + (E - 1));  // each of the other experts
    CHECK(plan.weight(0, 0) == Approx(p_other / 0.5).epsilon(1e-4));
    return 0;
  });
  auto hunyuan = test_config("hunyuan_v1_moe");
  hunyuan.layer_shapes = {{}, {}};
  CHECK_THROWS_WITH(kind(hunyuan, rw), Catch::Contains("cfg.layer(l)"));
}

}  // namespace
