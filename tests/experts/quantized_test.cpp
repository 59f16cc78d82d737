// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/experts/quantized.hpp and kernels/quantized.hpp: every format's kernel
// against the dequantise-then-double reference (on the quantised activations: tight; on the fp32
// activations: the activation quantisation bound), scalar and VNNI kernels bit for bit, batch
// invariance, GGUF bytes against quantisation here, and the layer over a quantized bank.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/experts/quantized.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/quantized.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
namespace fm = moe::formats;
namespace kq = moe::kernels::quant;

// W [n × k] quantised to F, its dequantised values (padded to whole blocks) and its panels.
template <class F>
struct quant_matrix {
  index n, k, kp;
  std::vector<std::byte> bytes;
  std::vector<float> deq;  // [n × kp]
  kq::quant_panels<F> panels;
  quant_matrix(const moe::row_matrix<float>& w)
      : n(w.rows()), k(w.cols()), kp(fm::blocks_per_row<F>(w.cols()) * F::block_values) {
    bytes = moe_test::quantised<F>(w);
    deq.resize(static_cast<std::size_t>(n * kp));
    fm::dequantize_rows<F>(bytes.data(), n, kp, deq.data(), kp);
    panels = kq::pack<F>(bytes.data(), n, kp);
  }
};

// y [rows × n] through the kernel (scalar or best).
template <class F>
std::vector<float> run_kernel(const quant_matrix<F>& q, const moe::row_matrix<float>& x, bool scalar) {
  const index rows = x.rows();
  std::vector<const float*> ptr(static_cast<std::size_t>(rows));
  for (index i = 0; i < rows; ++i) ptr[static_cast<std::size_t>(i)] = x.data() + i * x.cols();
  std::vector<std::byte> scratch(kq::activation_bytes(rows, q.kp));
  const auto xq = kq::quantize_activation(ptr.data(), rows, x.cols(), q.kp, scratch.data());
  std::vector<float> tile(static_cast<std::size_t>(rows * 16));
  std::vector<float> y(static_cast<std::size_t>(rows * q.n));
  for (index p = 0; p < q.panels.panels; ++p) {
    kq::panel(q.panels, p, xq, rows, tile.data(), 16, scalar);
    for (index i = 0; i < rows; ++i) {
      for (index j = 0; j < 16 && p * 16 + j < q.n; ++j) y[static_cast<std::size_t>(i * q.n + p * 16 + j)] = tile[static_cast<std::size_t>(i * 16 + j)];
    }
  }
  return y;
}

template <class F>
void check_format(std::uint64_t seed) {
  moe_test::rng rng(seed);
  for (const auto& [n, k] : std::vector<std::pair<index, index>>{{16, 256}, {37, 512}, {5, 300}, {70, 45}}) {
    INFO(F::name << ": n = " << n << ", k = " << k);
    const auto w = rng.matrix(n, k);
    const quant_matrix<F> q(w);
    for (const index rows : {1, 3, 4, 9}) {
      const auto x = rng.matrix(rows, k, 2.0f);
      const auto y = run_kernel(q, x, false);
      const auto ys = run_kernel(q, x, true);
      CHECK(std::memcmp(y.data(), ys.data(), y.size() * sizeof(float)) == 0);  // scalar == VNNI or AVX2
      // References: dequantised W times (a) the quantised activations, (b) x itself.
      double num_a = 0, num_b = 0, den = 0;
      for (index i = 0; i < rows; ++i) {
        std::vector<float> xp(static_cast<std::size_t>(q.kp), 0.0f), xqv(xp.size(), 0.0f);
        for (index c = 0; c < k; ++c) xp[static_cast<std::size_t>(c)] = x(i, c);
        for (index b = 0; b < q.kp / 32; ++b) {
          float amax = 0;
          for (index c = 0; c < 32; ++c) amax = std::max(amax, std::abs(xp[static_cast<std::size_t>(32 * b + c)]));
          const float dx = amax / 127.0f;
          for (index c = 0; c < 32; ++c) {
            const auto e = static_cast<std::size_t>(32 * b + c);
            xqv[e] = dx > 0 ? dx * std::clamp(std::round(xp[e] / dx), -127.0f, 127.0f) : 0.0f;
          }
        }
        for (index j = 0; j < n; ++j) {
          double ra = 0, rb = 0;
          for (index c = 0; c < q.kp; ++c) {
            const double wv = q.deq[static_cast<std::size_t>(j * q.kp + c)];
            ra += wv * xqv[static_cast<std::size_t>(c)];
            rb += wv * xp[static_cast<std::size_t>(c)];
          }
          const double got = y[static_cast<std::size_t>(i * n + j)];
          num_a += (got - ra) * (got - ra);
          num_b += (got - rb) * (got - rb);
          den += rb * rb;
        }
      }
      CHECK(std::sqrt(num_a / den) < 2e-6);   // the kernel's own arithmetic: fp32 rounding only
      CHECK(std::sqrt(num_b / den) < 1.5e-2); // + int8 activations (relative step 1/254 per block)
      // Batch invariance: each row alone gives the same bits.
      for (index i = 0; i < rows; ++i) {
        const moe::row_matrix<float> xi = x.row(i);
        const auto yi = run_kernel(q, xi, false);
        CHECK(std::memcmp(yi.data(), y.data() + i * n, static_cast<std::size_t>(n) * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("quantized kernels equal the dequantised reference, scalar and SIMD agree bit for bit", "[kernels][quantized]") {
  INFO("VNNI kernel compiled in: " << kq::has_vnni << ", AVX2 kernel: " << kq::has_avx2);
  check_format<fm::q8_0>(1);
  check_format<fm::q4_0>(2);
  check_format<fm::mxfp4>(3);
  check_format<fm::q4_k>(4);
  check_format<fm::q6_k>(5);
}

template <class F>
void check_layer(std::uint64_t seed) {
  moe_test::rng rng(seed);
  const index E = 8, d = 64, f = 40;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  using bank = moe::gated_mlp_experts<F>;
  const auto router_w = rng.matrix(E, d);
  // The reference: the naive SwiGLU layer on the dequantised weights.
  const auto dq = moe_test::dequantised<F>(w);
  for (const int k : {1, 2, 8}) {
    moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = k, .renormalize = true}),
                                                          bank(w.gate, w.up, w.down), moe::device::cpu{2});
    moe::layer<moe::top_k<>, bank, moe::device::serial> serial(moe::top_k<>(router_w, {.k = k, .renormalize = true}),
                                                              bank(w.gate, w.up, w.down));
    for (const index T : {1, 7, 64}) {
      INFO(F::name << ": k = " << k << ", T = " << T);
      const auto x = rng.matrix(T, d);
      moe::row_matrix<float> y(T, d), ys(T, d);
      layer.forward(x, y);
      serial.forward(x, ys);
      CHECK(moe_test::bitwise_equal(y, ys));  // thread invariance
      CHECK(moe_test::relative_error(y, moe_test::naive_layer(router_w, dq, x, k, true)) < 3e-2);
      const moe::row_matrix<float> x0 = x.row(0);
      moe::row_matrix<float> y0(1, d);
      layer.forward(x0, y0);
      CHECK(moe_test::bitwise_equal_rows(y0, y, 0));  // batch invariance
    }
  }
}

TEST_CASE("layer over quantized banks: naive reference on the dequantised weights, threads, batch", "[experts][quantized]") {
  check_layer<fm::q8_0>(11);
  check_layer<fm::q4_0>(12);
  check_layer<fm::mxfp4>(13);
  check_layer<fm::q4_k>(14);
  check_layer<fm::q6_k>(15);
}

TEST_CASE("a bank from GGUF tensor bytes equals the bank quantised here, bad bytes are errors", "[experts][quantized][error]") {
  moe_test::rng rng(21);
  const index E = 3, d = 256, f = 256;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  using F = fm::q4_k;
  const auto g = moe_test::quantised<F>(w.gate), u = moe_test::quantised<F>(w.up), dn = moe_test::quantised<F>(w.down);
  using bank = moe::gated_mlp_experts<F>;
  const bank from_bytes(g, u, dn, moe::swiglu_shape{E, d, f});
  const bank here(w.gate, w.up, w.down);
  CHECK(from_bytes.bytes_per_expert() == here.bytes_per_expert());
  CHECK(from_bytes.bytes_per_expert() <= 1.03 * 3 * static_cast<double>(fm::row_bytes<F>(d)) * f);
  const auto router_w = rng.matrix(E, d);
  moe::layer<moe::top_k<>, bank, moe::device::serial> a(moe::top_k<>(router_w, {.k = 2}), from_bytes);
  moe::layer<moe::top_k<>, bank, moe::device::serial> b(moe::top_k<>(router_w, {.k = 2}), here);
  const auto x = rng.matrix(9, d);
  moe::row_matrix<float> ya(9, d), yb(9, d);
  a.forward(x, ya);
  b.forward(x, yb);
  CHECK(moe_test::bitwise_equal(ya, yb));
  CHECK_THROWS_WITH(bank(std::span(g).first(g.size() - 144), u, dn, moe::swiglu_shape{E, d, f}),
                    Catch::Contains("parameter 'gate bytes' must be"));
  CHECK_THROWS_WITH(bank(g, u, dn, moe::swiglu_shape{E, 200, f}), Catch::Contains("parameter 'gate columns' must be a multiple of 256"));
  CHECK_THROWS_WITH(bank(g, u, dn, moe::swiglu_shape{index{1} << 59, d, f}), Catch::Contains("at most 2^40 rows"));
  auto bad = u;
  const std::uint16_t inf16 = 0x7c00;
  std::memcpy(bad.data() + 144 * 4 + 2, &inf16, 2);  // dmin of block 4
  CHECK_THROWS_WITH(bank(g, bad, dn, moe::swiglu_shape{E, d, f}), Catch::Contains("parameter 'up block 4 (row 4)' must be finite scales"));
}

// A layer over any quantized bank against a per-token reference in double on the dequantised
// weights (the activation applied in fp32 to the reference's double pre-activations).
template <class F, class Act, bool Gated>
void check_bank_kind(std::uint64_t seed, bool biases = false) {
  moe_test::rng rng(seed);
  const index E = 6, d = 64, f = 48, k = 2, T = 21;
  const auto gate = rng.matrix(E * f, d, 0.2f), up = rng.matrix(E * f, d, 0.2f), down = rng.matrix(E * d, f, 0.2f);
  using bank = moe::basic_mlp_experts<F, Act, Gated>;
  const auto make = [&] {
    if constexpr (Gated) {
      return bank(gate, up, down);
    } else {
      return bank(up, down);
    }
  };
  const auto router_w = rng.matrix(E, d);
  // gpt-oss's per-expert biases: gate and up before the activation, down on the output.
  std::vector<float> bg, bu, bd;
  if (biases) {
    for (index i = 0; i < E * f; ++i) {
      if (Gated) bg.push_back(rng.uniform(-0.5f, 0.5f));
      bu.push_back(rng.uniform(-0.5f, 0.5f));
    }
    for (index i = 0; i < E * d; ++i) bd.push_back(rng.uniform(-0.5f, 0.5f));
  }
  auto b = make();
  if (biases) b.set_biases(bg, bu, bd);
  CHECK(b.has_biases() == biases);
  moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = k, .renormalize = true}), std::move(b),
                                                        moe::device::cpu{2});
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  const auto G = moe_test::dequantised<F>(gate), U = moe_test::dequantised<F>(up), D = moe_test::dequantised<F>(down);
  const auto want = moe_test::plan_reference(layer.plan(), x, [&](index e, const float* xt, double wt, double* yt) {
    std::vector<double> h(static_cast<std::size_t>(f));
    for (index j = 0; j < f; ++j) {
      double g = biases && Gated ? bg[static_cast<std::size_t>(e * f + j)] : 0.0;
      double u = biases ? bu[static_cast<std::size_t>(e * f + j)] : 0.0;
      for (index c = 0; c < d; ++c) {
        g += static_cast<double>(G(e * f + j, c)) * xt[c];
        u += static_cast<double>(U(e * f + j, c)) * xt[c];
      }
      if constexpr (Gated) {
        h[static_cast<std::size_t>(j)] = Act::glu(static_cast<float>(g), static_cast<float>(u));
      } else {
        h[static_cast<std::size_t>(j)] = Act::f(static_cast<float>(u));
      }
    }
    for (index c = 0; c < d; ++c) {
      double o = biases ? bd[static_cast<std::size_t>(e * d + c)] : 0.0;
      for (index j = 0; j < f; ++j) o += static_cast<double>(D(e * d + c, j)) * h[static_cast<std::size_t>(j)];
      yt[c] += wt * o;
    }
  });
  INFO(F::name << " " << Act::name << (Gated ? " gated" : " not gated") << (biases ? " with biases" : ""));
  CHECK(moe_test::relative_error(y, want) < 3e-2);
}

TEST_CASE("a bank built expert by expert from bytes equals the bank from whole tensors", "[experts][quantized][error]") {
  moe_test::rng rng(22);
  const index E = 3, d = 64, f = 32;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  using F = fm::mxfp4;
  const auto g = moe_test::quantised<F>(w.gate), u = moe_test::quantised<F>(w.up), dn = moe_test::quantised<F>(w.down);
  using bank = moe::gated_mlp_experts<F, moe::act::clamped_swiglu>;
  const std::size_t gu = static_cast<std::size_t>(f) * fm::row_bytes<F>(d), dd = static_cast<std::size_t>(d) * fm::row_bytes<F>(f);
  std::vector<int> calls;
  const auto copy = [&](index e, int m, std::span<std::byte> out) {
    calls.push_back(static_cast<int>(e) * 3 + m);
    const auto& src = m == 0 ? g : m == 1 ? u : dn;
    const std::size_t n = m == 2 ? dd : gu;
    REQUIRE(out.size() == n);
    std::memcpy(out.data(), src.data() + static_cast<std::size_t>(e) * n, n);
  };
  const bank each = bank::from_expert_bytes(moe::swiglu_shape{E, d, f}, copy);
  CHECK(calls == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8});  // expert by expert: gate, up, down
  const bank whole(g, u, dn, moe::swiglu_shape{E, d, f});
  const auto router_w = rng.matrix(E, d);
  moe::layer<moe::top_k<>, bank, moe::device::serial> a(moe::top_k<>(router_w, {.k = 2}), each);
  moe::layer<moe::top_k<>, bank, moe::device::serial> b(moe::top_k<>(router_w, {.k = 2}), whole);
  const auto x = rng.matrix(11, d);
  moe::row_matrix<float> ya(11, d), yb(11, d);
  a.forward(x, ya);
  b.forward(x, yb);
  CHECK(moe_test::bitwise_equal(ya, yb));
  // The bytes are checked as a tensor's: a NaN scale names the expert and the matrix.
  const auto nan_scale = [&](index e, int m, std::span<std::byte> out) {
    copy(e, m, out);
    if (e == 1 && m == 2) out[fm::mxfp4::block_bytes * 3] = std::byte{255};
  };
  CHECK_THROWS_WITH(bank::from_expert_bytes(moe::swiglu_shape{E, d, f}, nan_scale),
                    Catch::Contains("parameter 'expert 1 down block 3 (row 3)' must be finite scales"));
  CHECK_THROWS_WITH(bank::from_expert_bytes(moe::swiglu_shape{E, 40, f}, copy), Catch::Contains("parameter 'shape.hidden' must be a multiple of 32 (the MXFP4 block), got 40"));
}

TEST_CASE("quantized banks with other activations: GeGLU, gpt-oss clamped SwiGLU, ReLU² and GELU MLPs", "[experts][quantized]") {
  check_bank_kind<fm::q8_0, moe::act::gelu_tanh, true>(31);
  check_bank_kind<fm::mxfp4, moe::act::clamped_swiglu, true>(32);
  check_bank_kind<fm::q4_k, moe::act::gelu_erf, true>(33);
  check_bank_kind<fm::q8_0, moe::act::relu2, false>(34);
  check_bank_kind<fm::q4_0, moe::act::gelu_tanh, false>(35);
  check_bank_kind<fm::q6_k, moe::act::relu, false>(36);
}

TEST_CASE("quantized banks with per-expert biases (gpt-oss), and bad biases", "[experts][quantized]") {
  check_bank_kind<fm::mxfp4, moe::act::clamped_swiglu, true>(41, true);
  check_bank_kind<fm::q8_0, moe::act::relu2, false>(42, true);
  moe_test::rng rng(43);
  moe::gated_mlp_experts<fm::q8_0> b(rng.matrix(2 * 32, 32), rng.matrix(2 * 32, 32), rng.matrix(2 * 32, 32));
  CHECK_THROWS_WITH(b.set_biases({}, std::vector<float>(63), {}), Catch::Contains("parameter 'up_bias.size()' must be equal to 64, got 63"));
  std::vector<float> nan(64, 0.0f);
  nan[5] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(b.set_biases(nan, {}, {}), Catch::Contains("parameter 'gate_bias[i]' must be finite"));
  CHECK_FALSE(b.has_biases());
  moe::mlp_experts<fm::q8_0> m(rng.matrix(2 * 32, 32), rng.matrix(2 * 32, 32));
  CHECK_THROWS_WITH(m.set_biases(std::vector<float>(64), {}, {}), Catch::Contains("gate_bias.size()"));
}

}  // namespace
