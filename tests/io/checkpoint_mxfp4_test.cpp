// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/checkpoint.hpp on gpt-oss's Hugging Face checkpoint as published: MXFP4
// experts as `*_blocks` / `*_scales` (U8) with gate and up interleaved on the rows, and BF16
// biases. The test writes such a checkpoint from fp32 experts quantised with the repository's
// MXFP4 quantiser, re-encoded into the Hugging Face layout by an encoder of its own, and checks
// the loaded bank bit for bit against the bank built from the GGUF-layout bytes of the same
// values, against the dequantise-then-fp32 reference with clamped SwiGLU and biases, and the
// errors of bad files.
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
namespace fm = moe::formats;
namespace mio = moe::io;

constexpr index E = 4, d = 64, f = 32, layers = 2, moe_layer = 1;
using qbank = moe::gated_mlp_experts<fm::mxfp4, moe::act::clamped_swiglu>;

std::uint64_t u(index v) { return static_cast<std::uint64_t>(v); }

/// The E2M1 value of a code as gpt-oss's reference tables write it (FP4_VALUES of transformers'
/// integrations/mxfp4.py and of OpenAI's gpt_oss/torch/weights.py): magnitude index c & 7, sign c & 8.
float fp4_value(std::uint8_t c) {
  static constexpr float magnitude[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  return (c & 8u) ? -magnitude[c & 7u] : magnitude[c & 7u];
}

/// Code of element k (0..31) of a block in GGUF's layout: byte 1 + (k mod 16) after the scale,
/// the low nibble for k < 16 and the high nibble for k >= 16.
std::uint8_t gguf_code(const std::byte* block, int k) {
  const auto b = static_cast<std::uint8_t>(block[1 + k % 16]);
  return k < 16 ? static_cast<std::uint8_t>(b & 0x0f) : static_cast<std::uint8_t>(b >> 4);
}

/// The Hugging Face tensors of one weight: blocks `[E, rows, cols/32, 16]` and scales
/// `[E, rows, cols/32]`, where element 2i of a block is the low nibble of byte i and 2i + 1 its
/// high nibble.
struct hf_weight {
  std::vector<std::byte> blocks, scales;
};

/// Re-encodes GGUF-layout rows into the Hugging Face layout; `source_row(e, r)` gives the GGUF
/// row that becomes expert e's row r.
template <class Row>
hf_weight to_hf(index rows, index cols, Row&& source_row) {
  const index nb = cols / 32;
  hf_weight w;
  for (index e = 0; e < E; ++e) {
    for (index r = 0; r < rows; ++r) {
      const std::byte* row = source_row(e, r);
      for (index b = 0; b < nb; ++b) {
        const std::byte* blk = row + b * fm::mxfp4::block_bytes;
        w.scales.push_back(blk[0]);
        for (int i = 0; i < 16; ++i) {
          w.blocks.push_back(static_cast<std::byte>(gguf_code(blk, 2 * i) | (gguf_code(blk, 2 * i + 1) << 4)));
        }
      }
    }
  }
  return w;
}

/// Row r of expert e of a Hugging Face weight, decoded as the reference code decodes it
/// (value = FP4_VALUES[nibble] · 2^(scale - 127), low nibble first).
std::vector<float> hf_decode_row(const hf_weight& w, index rows, index cols, index e, index r) {
  const index nb = cols / 32;
  std::vector<float> out;
  for (index b = 0; b < nb; ++b) {
    const std::size_t at = static_cast<std::size_t>((e * rows + r) * nb + b);
    const int s = static_cast<int>(static_cast<std::uint8_t>(w.scales[at])) - 127;
    for (int i = 0; i < 16; ++i) {
      const auto byte = static_cast<std::uint8_t>(w.blocks[at * 16 + static_cast<std::size_t>(i)]);
      out.push_back(std::ldexp(fp4_value(byte & 0x0f), s));
      out.push_back(std::ldexp(fp4_value(byte >> 4), s));
    }
  }
  return out;
}

std::vector<std::byte> bf16_bytes(const std::vector<float>& v) {
  std::vector<std::byte> b(v.size() * 2);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::uint16_t bits = moe::bf16(v[i]).bits;
    std::memcpy(b.data() + 2 * i, &bits, 2);
  }
  return b;
}
std::vector<std::byte> f32_bytes(const float* p, std::size_t n) {
  std::vector<std::byte> b(n * 4);
  std::memcpy(b.data(), p, b.size());
  return b;
}
float bf16_round(float v) { return static_cast<float>(moe::bf16(v)); }

/// A gpt-oss layer: fp32 experts, their MXFP4 bytes in GGUF's layout and in the Hugging Face
/// layout, biases (bf16 values), router.
struct oss_layer {
  moe::row_matrix<float> gate, up, down, router;
  std::vector<std::byte> gb, ub, db;  // GGUF layout: [E·f rows of d], [E·f rows of d], [E·d rows of f]
  hf_weight gate_up, down_hf;
  std::vector<float> bg, bu, bd, rb;  // [E·f], [E·f], [E·d], [E]
  std::vector<float> gate_up_bias;    // [E, 2f] interleaved
};

oss_layer make_layer(std::uint64_t seed) {
  moe_test::rng rng(seed);
  oss_layer L;
  L.gate = rng.matrix(E * f, d, 0.3f);
  L.up = rng.matrix(E * f, d, 0.3f);
  L.down = rng.matrix(E * d, f, 0.3f);
  L.router = rng.matrix(E, d, 0.5f);
  L.gb = moe_test::quantised<fm::mxfp4>(L.gate);
  L.ub = moe_test::quantised<fm::mxfp4>(L.up);
  L.db = moe_test::quantised<fm::mxfp4>(L.down);
  const std::size_t rd = fm::row_bytes<fm::mxfp4>(d), rf = fm::row_bytes<fm::mxfp4>(f);
  // gate_up_proj: row 2j is gate row j, row 2j + 1 up row j (gate = gate_up[..., ::2]).
  L.gate_up = to_hf(2 * f, d, [&](index e, index r) {
    const auto& src = r % 2 == 0 ? L.gb : L.ub;
    return src.data() + static_cast<std::size_t>(e * f + r / 2) * rd;
  });
  L.down_hf = to_hf(d, f, [&](index e, index r) { return L.db.data() + static_cast<std::size_t>(e * d + r) * rf; });
  for (index i = 0; i < E * f; ++i) {
    L.bg.push_back(bf16_round(rng.uniform(-0.3f, 0.3f)));
    L.bu.push_back(bf16_round(rng.uniform(-0.3f, 0.3f)));
  }
  for (index i = 0; i < E * d; ++i) L.bd.push_back(bf16_round(rng.uniform(-0.3f, 0.3f)));
  for (index i = 0; i < E; ++i) L.rb.push_back(rng.uniform(-0.3f, 0.3f));
  for (index e = 0; e < E; ++e) {
    for (index j = 0; j < f; ++j) {
      L.gate_up_bias.push_back(L.bg[static_cast<std::size_t>(e * f + j)]);
      L.gate_up_bias.push_back(L.bu[static_cast<std::size_t>(e * f + j)]);
    }
  }
  return L;
}

fs::path temp_dir(const std::string& name) {
  const auto dir = fs::temp_directory_path() / ("moe_checkpoint_mxfp4_test_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

/// The published gpt-oss-20b config.json shrunk to the test's shapes, as `dir/config.json`.
void write_config(const fs::path& dir) {
  std::ifstream in(std::string(MOE_TEST_DATA_DIR) + "/hf-configs/gpt-oss-20b.json");
  REQUIRE(in);
  auto j = nlohmann::json::parse(in);
  j["hidden_size"] = d;
  j["intermediate_size"] = f;
  j["num_local_experts"] = E;
  j["num_experts_per_tok"] = 2;
  j["experts_per_token"] = 2;
  j["num_hidden_layers"] = layers;
  j["layer_types"] = nlohmann::json::array({"sliding_attention", "full_attention"});
  std::ofstream(dir / "config.json") << j.dump(2);
}

/// What a test writes: each tensor may be left out or replaced.
struct tensor_edit {
  std::string skip;     // a tensor name to leave out
  std::string replace;  // a tensor name to write as `dtype` / `shape` / `bytes` instead
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::vector<std::byte> bytes;
  bool dense = false;  // dense BF16 gate_up_proj / down_proj instead of blocks
};
tensor_edit skipping(const std::string& name) {
  tensor_edit e;
  e.skip = name;
  return e;
}
tensor_edit dense_experts() {
  tensor_edit e;
  e.dense = true;
  return e;
}
tensor_edit replacing(const std::string& name, const std::string& dtype, std::vector<std::uint64_t> shape, std::vector<std::byte> bytes) {
  tensor_edit e;
  e.replace = name;
  e.dtype = dtype;
  e.shape = std::move(shape);
  e.bytes = std::move(bytes);
  return e;
}

mio::checkpoint write_checkpoint(const fs::path& dir, const oss_layer& L, const tensor_edit& edit = {}) {
  const auto n = mio::hf_tensor_names("gpt_oss", moe_layer);
  mio::safetensors_writer w;
  const auto add = [&](const std::string& name, const std::string& dtype, std::vector<std::uint64_t> shape,
                       const std::vector<std::byte>& bytes) {
    if (name == edit.skip) return;
    if (name == edit.replace) {
      w.add(name, edit.dtype, edit.shape, edit.bytes);
    } else {
      w.add(name, dtype, std::move(shape), bytes);
    }
  };
  add(n.router, "F32", {u(E), u(d)}, f32_bytes(L.router.data(), static_cast<std::size_t>(L.router.size())));
  add(n.router_bias, "F32", {u(E)}, f32_bytes(L.rb.data(), L.rb.size()));
  add(n.gate_up_bias, "BF16", {u(E), u(2 * f)}, bf16_bytes(L.gate_up_bias));
  add(n.down_bias, "BF16", {u(E), u(d)}, bf16_bytes(L.bd));
  if (edit.dense) {  // the BF16 form: gate_up_proj [E, d, 2f], down_proj [E, f, d]
    add(n.gate, "BF16", {u(E), u(d), u(2 * f)}, bf16_bytes(std::vector<float>(static_cast<std::size_t>(E * d * 2 * f))));
    add(n.down, "BF16", {u(E), u(f), u(d)}, bf16_bytes(std::vector<float>(static_cast<std::size_t>(E * f * d))));
  } else {
    add(n.gate_blocks, "U8", {u(E), u(2 * f), u(d / 32), 16}, L.gate_up.blocks);
    add(n.gate_scales, "U8", {u(E), u(2 * f), u(d / 32)}, L.gate_up.scales);
    add(n.down_blocks, "U8", {u(E), u(d), u(f / 32), 16}, L.down_hf.blocks);
    add(n.down_scales, "U8", {u(E), u(d), u(f / 32)}, L.down_hf.scales);
  }
  w.write((dir / "model.safetensors").string());
  write_config(dir);
  return mio::checkpoint(dir.string());
}

/// y of a batch through `bank` with gpt-oss's router (top-k of W x + b, softmax over the k).
moe::row_matrix<float> run(const oss_layer& L, qbank bank, const moe::row_matrix<float>& x, moe::routing_plan* plan = nullptr) {
  moe::layer<moe::topk_softmax, qbank, moe::device::serial> layer(moe::topk_softmax(L.router, {.k = 2, .logit_bias = L.rb}),
                                                                 std::move(bank));
  moe::row_matrix<float> y(x.rows(), d);
  layer.forward(x, y);
  if (plan) *plan = layer.plan();
  return y;
}

TEST_CASE("checkpoint: the test's Hugging Face MXFP4 encoding decodes to the GGUF values", "[io][checkpoint][mxfp4]") {
  // The encoder of this test against the reference code's decoding: every row of gate_up_proj
  // and down_proj decodes (FP4_VALUES, low nibble first, 2^(scale - 127)) to the dequantised
  // GGUF values of the rows it came from, gate on the even rows.
  const auto L = make_layer(61);
  const auto G = moe_test::dequantised<fm::mxfp4>(L.gate), U = moe_test::dequantised<fm::mxfp4>(L.up);
  const auto D = moe_test::dequantised<fm::mxfp4>(L.down);
  bool same = true;
  for (index e = 0; e < E; ++e) {
    for (index r = 0; r < 2 * f; ++r) {
      const auto row = hf_decode_row(L.gate_up, 2 * f, d, e, r);
      const auto& want = r % 2 == 0 ? G : U;
      for (index c = 0; c < d; ++c) same = same && row[static_cast<std::size_t>(c)] == want(e * f + r / 2, c);
    }
    for (index r = 0; r < d; ++r) {
      const auto row = hf_decode_row(L.down_hf, d, f, e, r);
      for (index c = 0; c < f; ++c) same = same && row[static_cast<std::size_t>(c)] == D(e * d + r, c);
    }
  }
  CHECK(same);
}

TEST_CASE("checkpoint: gpt-oss's Hugging Face MXFP4 experts load bit for bit as the GGUF bank", "[io][checkpoint][mxfp4]") {
  const auto dir = temp_dir("load");
  const auto L = make_layer(62);
  const auto ckpt = write_checkpoint(dir, L);
  const auto cfg = ckpt.config();
  REQUIRE(cfg.model_type == "gpt_oss");
  REQUIRE(cfg.hidden == d);
  REQUIRE(cfg.moe_intermediate == f);
  const auto r = mio::load_router(ckpt, cfg, moe_layer);
  CHECK(r.logit_bias == L.rb);

  auto got = mio::load_quantized_experts<fm::mxfp4, moe::act::clamped_swiglu>(ckpt, cfg, moe_layer);
  CHECK(got.num_experts() == E);
  CHECK(got.hidden() == d);
  CHECK(got.intermediate() == f);
  CHECK(got.has_biases());
  qbank want(L.gb, L.ub, L.db, moe::swiglu_shape{E, d, f});
  want.set_biases(L.bg, L.bu, L.bd);
  const auto x = moe_test::rng(63).matrix(29, d);
  moe::routing_plan plan;
  const auto y = run(L, std::move(got), x, &plan);
  // The same blocks, scales and biases: bitwise the bank built from GGUF-layout bytes.
  CHECK(moe_test::bitwise_equal(y, run(L, std::move(want), x)));

  // Against the dequantise-then-fp32 reference (double sums over the dequantised weights, the
  // canonical clamped SwiGLU on the biased pre-activations, the down bias on each output). The
  // kernels quantise activations to int8 blocks of 32, hence the bound: the one of the quantized
  // bank tests (tests/experts/quantized_test.cpp).
  const auto G = moe_test::dequantised<fm::mxfp4>(L.gate), U = moe_test::dequantised<fm::mxfp4>(L.up);
  const auto D = moe_test::dequantised<fm::mxfp4>(L.down);
  const auto ref = moe_test::plan_reference(plan, x, [&](index e, const float* xt, double wt, double* yt) {
    std::vector<double> h(static_cast<std::size_t>(f));
    for (index j = 0; j < f; ++j) {
      double g = L.bg[static_cast<std::size_t>(e * f + j)], v = L.bu[static_cast<std::size_t>(e * f + j)];
      for (index c = 0; c < d; ++c) {
        g += static_cast<double>(G(e * f + j, c)) * xt[c];
        v += static_cast<double>(U(e * f + j, c)) * xt[c];
      }
      h[static_cast<std::size_t>(j)] = moe::act::clamped_swiglu::glu(static_cast<float>(g), static_cast<float>(v));
    }
    for (index c = 0; c < d; ++c) {
      double o = L.bd[static_cast<std::size_t>(e * d + c)];
      for (index j = 0; j < f; ++j) o += static_cast<double>(D(e * d + c, j)) * h[static_cast<std::size_t>(j)];
      yt[c] += wt * o;
    }
  });
  CHECK(moe_test::relative_error(y, ref) < 3e-2);

  // Dense experts are refused by load_experts, which says what to use.
  CHECK_THROWS_WITH(mio::load_experts(ckpt, cfg, moe_layer),
                    Catch::Contains("have biases and a clamped SwiGLU") &&
                        Catch::Contains("load_quantized_experts<moe::formats::mxfp4, moe::act::clamped_swiglu>"));
  // Another activation, another format.
  CHECK_THROWS_WITH((mio::load_quantized_experts<fm::mxfp4>(ckpt, cfg, moe_layer)),
                    Catch::Contains("parameter 'Activation' must be act::clamped_swiglu (gpt-oss's experts), got silu"));
  CHECK_THROWS_WITH((mio::load_quantized_experts<fm::q8_0, moe::act::clamped_swiglu>(ckpt, cfg, moe_layer)),
                    Catch::Contains("quantized experts load from GGUF files, and from gpt-oss's Hugging Face MXFP4"));
  fs::remove_all(dir);
}

TEST_CASE("checkpoint: bad gpt-oss MXFP4 tensors name themselves", "[io][checkpoint][mxfp4][error]") {
  const auto dir = temp_dir("errors");
  const auto L = make_layer(64);
  const auto n = mio::hf_tensor_names("gpt_oss", moe_layer);
  const auto load = [&](const tensor_edit& edit) {
    const auto ckpt = write_checkpoint(dir, L, edit);
    return mio::load_quantized_experts<fm::mxfp4, moe::act::clamped_swiglu>(ckpt, ckpt.config(), moe_layer);
  };
  SECTION("blocks of another dtype") {
    const auto e = replacing(n.gate_blocks, "I8", {u(E), u(2 * f), u(d / 32), 16}, L.gate_up.blocks);
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj_blocks' dtype") &&
                                   Catch::Contains("U8") && Catch::Contains("I8"));
  }
  SECTION("scales of another dtype") {
    const auto e = replacing(n.down_scales, "F8_E8M0", {u(E), u(d), u(f / 32)}, L.down_hf.scales);
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.down_proj_scales' dtype") &&
                                   Catch::Contains("F8_E8M0"));
  }
  SECTION("blocks of another shape") {
    // The dense input-major order [E, d/32, 2f, 16]: the same bytes, another shape.
    const auto e = replacing(n.gate_blocks, "U8", {u(E), u(d / 32), u(2 * f), 16}, L.gate_up.blocks);
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj_blocks' shape") &&
                                   Catch::Contains("[4, 64, 2, 16]") && Catch::Contains("[4, 2, 64, 16]"));
  }
  SECTION("scales of another shape") {
    const auto e = replacing(n.down_scales, "U8", {u(E), u(d - 16), u(f / 32)}, std::vector<std::byte>(static_cast<std::size_t>(E * (d - 16))));
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.down_proj_scales' shape") &&
                                   Catch::Contains("[4, 64, 1]") && Catch::Contains("[4, 48, 1]"));
  }
  SECTION("missing scales") {
    CHECK_THROWS_WITH(load(skipping(n.gate_scales)),
                      Catch::Contains("gpt-oss layer 1 has no MXFP4 tensor 'model.layers.1.mlp.experts.gate_up_proj_scales'"));
    CHECK_THROWS_WITH(load(skipping(n.down_blocks)),
                      Catch::Contains("gpt-oss layer 1 has no MXFP4 tensor 'model.layers.1.mlp.experts.down_proj_blocks'"));
  }
  SECTION("missing biases") {
    CHECK_THROWS_WITH(load(skipping(n.gate_up_bias)),
                      Catch::Contains("gpt-oss layer 1 has no expert bias tensor 'model.layers.1.mlp.experts.gate_up_proj_bias'"));
    CHECK_THROWS_WITH(load(skipping(n.down_bias)),
                      Catch::Contains("gpt-oss layer 1 has no expert bias tensor 'model.layers.1.mlp.experts.down_proj_bias'"));
  }
  SECTION("a bias of another shape or dtype") {
    const auto e = replacing(n.gate_up_bias, "BF16", {u(E), u(f)}, bf16_bytes(L.bg));
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj_bias' shape") &&
                                   Catch::Contains("[4, 64]") && Catch::Contains("[4, 32]"));
    const auto t = replacing(n.down_bias, "I16", {u(E), u(d)}, bf16_bytes(L.bd));
    CHECK_THROWS_WITH(load(t), Catch::Contains("tensor 'model.layers.1.mlp.experts.down_proj_bias' dtype"));
  }
  SECTION("a NaN scale") {
    auto scales = L.gate_up.scales;
    const std::size_t at = (static_cast<std::size_t>(2 * 2 * f + 5) * static_cast<std::size_t>(d / 32)) + 1;  // [2, 5, 1]
    scales[at] = std::byte{255};
    const auto e = replacing(n.gate_scales, "U8", {u(E), u(2 * f), u(d / 32)}, scales);
    CHECK_THROWS_WITH(load(e), Catch::Contains("tensor 'model.layers.1.mlp.experts.gate_up_proj_scales' [2, 5, 1]") &&
                                   Catch::Contains("255 (NaN)"));
  }
  SECTION("dense BF16 experts") {
    CHECK_THROWS_WITH(load(dense_experts()), Catch::Contains("gpt-oss layer 1's experts are dense ('model.layers.1.mlp.experts.gate_up_proj')") &&
                                                 Catch::Contains("gated_mlp_experts<F, act::clamped_swiglu>"));
  }
  fs::remove_all(dir);
}

}  // namespace
