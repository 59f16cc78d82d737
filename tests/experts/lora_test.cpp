// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/experts/lora.hpp: a layer over LoRA experts and a base projection
// (y = W_0 x + Σ w (α/r) B_e A_e x) equals a per-expert reference in double on random shapes,
// over every host device; batch and thread invariance bit for bit; LoRA experts beside SwiGLU
// experts in a mixed bank; bf16 weights; every shape and configuration check.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include <moe/experts/lora.hpp>
#include <moe/experts/mixed.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/devices.hpp"
#include "../support/layers.hpp"
#include "../support/quantized.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
using lora = moe::lora_experts<float>;
using fp32 = moe::swiglu_experts<float>;

// LoRA weights in checkpoint layout and the naive expert: u = A_e x, y += w · s · B_e u (double).
struct naive_lora {
  index experts = 0, d = 0, r = 0;
  moe::lora_config config;
  moe::row_matrix<float> a;   // [E·r × d]
  moe::row_matrix<float> b;   // [E·d × r]
  moe::row_matrix<float> w0;  // [d × d]

  void accumulate(index e, const float* x, double w, double* y) const {
    std::vector<double> u(static_cast<std::size_t>(r), 0.0);
    for (index j = 0; j < r; ++j) {
      for (index k = 0; k < d; ++k) u[static_cast<std::size_t>(j)] += double(a(e * r + j, k)) * double(x[k]);
    }
    const double s = w * config.scaling();
    for (index i = 0; i < d; ++i) {
      double acc = 0;
      for (index j = 0; j < r; ++j) acc += double(b(e * d + i, j)) * u[static_cast<std::size_t>(j)];
      y[i] += s * acc;
    }
  }
  void base(const float* x, double* y) const {
    for (index i = 0; i < d; ++i) {
      double acc = 0;
      for (index k = 0; k < d; ++k) acc += double(w0(i, k)) * double(x[k]);
      y[i] += acc;
    }
  }
  [[nodiscard]] lora bank() const { return lora(a, b, config); }
  [[nodiscard]] moe::shared_experts<lora> base_bank() const { return moe::shared_experts<lora>(lora::base_projection(w0)); }
};

naive_lora random_lora(moe_test::rng& rng, index E, index d, index r, double alpha, bool rslora = false) {
  naive_lora w;
  w.experts = E;
  w.d = d;
  w.r = r;
  w.config = {r, alpha, rslora};
  w.a = rng.matrix(E * r, d, 1.0f / std::sqrt(static_cast<float>(d)));
  w.b = rng.matrix(E * d, r, 1.0f / std::sqrt(static_cast<float>(r)));
  w.w0 = rng.matrix(d, d, 1.0f / std::sqrt(static_cast<float>(d)));
  return w;
}

// W_0 x + Σ_slots w · Expert_e(x) over the layer's plan (base: whether W_0 is added).
std::vector<double> reference(const moe::routing_plan& plan, const naive_lora& w, const moe::row_matrix<float>& x, bool base) {
  auto y = moe_test::plan_reference(plan, x, [&](index e, const float* xt, double wt, double* yt) { w.accumulate(e, xt, wt, yt); });
  if (base) {
    for (index t = 0; t < x.rows(); ++t) w.base(x.data() + t * w.d, y.data() + t * w.d);
  }
  return y;
}

double max_abs_error(const moe::row_matrix<float>& y, const std::vector<double>& want) {
  double m = 0;
  for (index i = 0; i < y.rows(); ++i) {
    for (index j = 0; j < y.cols(); ++j) m = std::max(m, std::abs(double(y(i, j)) - want[static_cast<std::size_t>(i * y.cols() + j)]));
  }
  return m;
}

TEMPLATE_LIST_TEST_CASE("lora experts: the layer equals W_0 x plus the per-expert reference on random shapes", "[experts][lora]",
                        moe_test::devices) {
  using Device = TestType;
  moe_test::rng rng(81);
  // Tolerance: fp32 chains of length d and r against double; |y| is O(1) with these scales.
  constexpr double tolerance = 2e-5;
  for (int c = 0; c < 8; ++c) {
    const index d = c == 0 ? 1 : rng.integer(2, 72), r = c == 0 ? 1 : rng.integer(1, 40);
    const index E = rng.integer(1, 10), k = rng.integer(1, static_cast<int>(std::min<index>(4, E)));
    const index T = c == 1 ? 300 : rng.integer(1, 300);
    const bool rslora = c % 3 == 2;
    const auto w = random_lora(rng, E, d, r, rng.uniform(0.5f, 32.0f), rslora);
    const auto router_w = rng.matrix(E, d);
    const auto x = rng.matrix(T, d);
    INFO("d = " << d << ", r = " << r << ", E = " << E << ", k = " << k << ", T = " << T << ", rslora = " << rslora);
    using layer_t = moe::layer<moe::top_k<>, lora, Device>;
    layer_t with_base(moe::top_k<>(router_w, {.k = static_cast<int>(k), .renormalize = c % 2 == 0}), w.bank(), w.base_bank(),
                      moe_test::on<Device>::device(E));
    layer_t adapters_only(moe::top_k<>(router_w, {.k = static_cast<int>(k), .renormalize = c % 2 == 0}), w.bank(),
                          moe_test::on<Device>::device(E));
    moe::row_matrix<float> y(T, d), ya(T, d);
    with_base.forward(x, y);
    adapters_only.forward(x, ya);
    CHECK(max_abs_error(y, reference(with_base.plan(), w, x, true)) < tolerance);
    CHECK(max_abs_error(ya, reference(adapters_only.plan(), w, x, false)) < tolerance);
    CHECK(with_base.experts().rank() == r);
    CHECK(with_base.experts().scale() == static_cast<float>(rslora ? w.config.alpha / std::sqrt(double(r)) : w.config.alpha / double(r)));
  }
}

TEST_CASE("lora experts: batch and thread invariance bit for bit", "[experts][lora]") {
  moe_test::rng rng(82);
  const index E = 12, d = 100, r = 24, T = 77;
  const auto w = random_lora(rng, E, d, r, 16.0);
  const auto router_w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  const moe::top_k<> router(router_w, {.k = 3, .renormalize = true});
  moe::layer<moe::top_k<>, lora, moe::device::serial> serial(router, w.bank(), w.base_bank());
  moe::layer<moe::top_k<>, lora, moe::device::cpu> one(router, w.bank(), w.base_bank(), moe::device::cpu{1});
  moe::layer<moe::top_k<>, lora, moe::device::cpu> two(router, w.bank(), w.base_bank(), moe::device::cpu{2});
  moe::row_matrix<float> ys(T, d), y1(T, d), y2(T, d);
  serial.forward(x, ys);
  one.forward(x, y1);
  two.forward(x, y2);
  CHECK(moe_test::bitwise_equal(ys, y1));
  CHECK(moe_test::bitwise_equal(ys, y2));
  // Batches of other sizes (1, 5, 13, ...) give every token the same bits.
  for (index t0 = 0, n = 1; t0 < T; t0 += n, n = n * 2 + 3) {
    const index m = std::min(n, T - t0);
    const moe::row_matrix<float> xb = x.middleRows(t0, m);
    moe::row_matrix<float> yb(m, d);
    two.forward(xb, yb);
    INFO("rows " << t0 << " .. " << t0 + m);
    CHECK(moe_test::bitwise_equal_rows(yb, ys, t0));
  }
}

TEST_CASE("lora experts: a mixed bank of SwiGLU and LoRA experts over a base projection equals the per-part reference",
          "[experts][lora][mixed]") {
  moe_test::rng rng(83);
  const index d = 56, E1 = 3, E2 = 6, f = 40, r = 8, T = 45;
  const auto full = moe_test::random_swiglu(rng, E1, d, f);
  const auto w = random_lora(rng, E2, d, r, 16.0);
  using bank = moe::mixed_experts<fp32, lora>;
  // The base projection as the mixed bank's shared expert: no SwiGLU expert beside it.
  const float* none = nullptr;
  moe::shared_experts<bank> base(bank(fp32(none, none, none, moe::swiglu_shape{0, d, f}), lora::base_projection(w.w0)));
  const auto router_w = rng.matrix(E1 + E2, d);
  const moe::top_k<> router(router_w, {.k = 3});
  moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(router, bank(moe_test::make_bank(full), w.bank()), base,
                                                        moe::device::cpu{2});
  moe::layer<moe::top_k<>, bank, moe::device::serial> serial(router, bank(moe_test::make_bank(full), w.bank()), base);
  moe::layer<moe::top_k<>, bank, moe::device::cpu> routed_only(router, bank(moe_test::make_bank(full), w.bank()),
                                                              moe::device::cpu{2});
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d), ys(T, d), yr(T, d);
  layer.forward(x, y);
  serial.forward(x, ys);
  routed_only.forward(x, yr);
  CHECK(moe_test::bitwise_equal(y, ys));
  const auto part = [&](index e, const float* xt, double wt, double* yt) {
    if (e < E1) {
      full.accumulate(e, xt, wt, yt);
    } else {
      w.accumulate(e - E1, xt, wt, yt);
    }
  };
  auto want = moe_test::plan_reference(layer.plan(), x, part);
  const auto want_routed = moe_test::plan_reference(routed_only.plan(), x, part);
  for (index t = 0; t < T; ++t) w.base(x.data() + t * d, want.data() + t * d);
  index in_lora = 0;
  for (index t = 0; t < T; ++t) {
    for (index s = 0; s < 3; ++s) in_lora += layer.plan().expert(t, s) >= E1;
  }
  CHECK(in_lora > 0);
  CHECK(in_lora < 3 * T);  // both parts are used
  CHECK(max_abs_error(y, want) < 2e-5);
  CHECK(max_abs_error(yr, want_routed) < 2e-5);
  // A mixed bank of the LoRA part alone gives that part's bits.
  moe::layer<moe::top_k<>, moe::mixed_experts<lora>, moe::device::cpu> one(
      moe::top_k<>(router_w.topRows(E2), {.k = 2}), moe::mixed_experts<lora>(w.bank()), moe::device::cpu{2});
  moe::layer<moe::top_k<>, lora, moe::device::cpu> plain(moe::top_k<>(router_w.topRows(E2), {.k = 2}), w.bank(),
                                                        moe::device::cpu{2});
  moe::row_matrix<float> y1(T, d), y2(T, d);
  one.forward(x, y1);
  plain.forward(x, y2);
  CHECK(moe_test::bitwise_equal(y1, y2));
}

TEST_CASE("lora experts: bf16 weights stay within 1e-2 of the fp32 reference", "[experts][lora]") {
  moe_test::rng rng(84);
  const index E = 5, d = 64, r = 16, T = 40;
  const auto w = random_lora(rng, E, d, r, 32.0);
  using bbank = moe::lora_experts<moe::bf16>;
  const auto router_w = rng.matrix(E, d);
  moe::layer<moe::top_k<>, bbank, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = 2}), bbank(w.a, w.b, w.config),
                                                          moe::shared_experts<bbank>(bbank::base_projection(w.w0)),
                                                          moe::device::cpu{2});
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  CHECK(moe_test::relative_error(y, reference(layer.plan(), w, x, true)) < 1e-2);
}

TEST_CASE("lora experts: every shape and configuration check names its parameter", "[experts][lora][error]") {
  moe_test::rng rng(85);
  const index d = 16, r = 4;
  const auto a = rng.matrix(3 * r, d), b = rng.matrix(3 * d, r);
  const auto make = [](const moe::row_matrix<float>& aa, const moe::row_matrix<float>& bb, moe::lora_config c) {
    return lora(aa, bb, c);
  };
  CHECK(make(a, b, {r, 8.0}).num_experts() == 3);
  CHECK_THROWS_WITH(make(a, b, {0, 8.0}), Catch::Contains("parameter 'config.rank' must be >= 1, got 0"));
  CHECK_THROWS_WITH(make(a, b, {r, std::nan("")}), Catch::Contains("parameter 'config.alpha' must be finite"));
  CHECK_THROWS_WITH(make(a, b, {r, HUGE_VAL}), Catch::Contains("parameter 'config.alpha' must be finite"));
  CHECK_THROWS_WITH(make(a, b, {r, 1e300}), Catch::Contains("parameter 'config.scaling()' must be finite in float"));
  CHECK_THROWS_WITH(make(a, b, {5, 8.0}), Catch::Contains("parameter 'a.rows()' must be a positive multiple of the rank r = 5, got 12"));
  CHECK_THROWS_WITH(make(a, b, {24, 8.0}), Catch::Contains("parameter 'a.rows()' must be a positive multiple of the rank r = 24, got 12"));
  CHECK_THROWS_WITH(make(a, rng.matrix(2 * d, r), {r, 8.0}), Catch::Contains("parameter 'b.rows()' must be equal to 48, got 32"));
  CHECK_THROWS_WITH(make(a, rng.matrix(3 * d, r + 1), {r, 8.0}), Catch::Contains("parameter 'b.cols()' must be equal to 4, got 5"));
  CHECK_THROWS_WITH(make(moe::row_matrix<float>(3 * r, 0), moe::row_matrix<float>(0, r), {r, 8.0}),
                    Catch::Contains("parameter 'a.cols()' must be >= 1, got 0"));
  CHECK_THROWS_WITH(lora::base_projection(rng.matrix(d, d + 1)), Catch::Contains("parameter 'w0.rows()' must be equal to 17, got 16"));
  const float* none = nullptr;
  CHECK_THROWS_WITH(lora(none, none, -1, d, {r, 8.0}), Catch::Contains("parameter 'experts' must be >= 0, got -1"));
  CHECK_THROWS_WITH(lora(none, none, 2, 0, {r, 8.0}), Catch::Contains("parameter 'hidden' must be >= 1, got 0"));
  CHECK(lora(none, none, 0, d, {r, 8.0}).num_experts() == 0);
  // The layer checks the base projection's width against the adapters'.
  const auto router_w = rng.matrix(3, d);
  const auto mismatched = [&] {
    return moe::layer<moe::top_k<>, lora, moe::device::serial>(moe::top_k<>(router_w, {.k = 1}), make(a, b, {r, 8.0}),
                                                                 moe::shared_experts<lora>(lora::base_projection(rng.matrix(8, 8))));
  };
  CHECK_THROWS_WITH(mismatched(), Catch::Contains("parameter 'shared.hidden()' must be equal to 16, got 8"));
}

}  // namespace
