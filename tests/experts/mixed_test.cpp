// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/experts/mixed.hpp: a layer over a bank made of banks of different widths
// and formats equals a per-expert reference, is thread and batch invariant, and a mixed bank of
// one part gives that part's bits.
#include <catch2/catch.hpp>

#include <vector>

#include <moe/experts/mixed.hpp>
#include <moe/experts/quantized.hpp>
#include <moe/moe.hpp>

#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/quantized.hpp"
#include "../support/random.hpp"

namespace {
using moe::index;
namespace fm = moe::formats;
using fp32 = moe::swiglu_experts<float>;

TEST_CASE("mixed bank: small and big fp32 experts in one layer, against the naive reference", "[experts][mixed]") {
  moe_test::rng rng(61);
  const index d = 48, E1 = 3, E2 = 5;
  const auto small = moe_test::random_swiglu(rng, E1, d, 16);  // Duo-LLM: small and big modules
  const auto big = moe_test::random_swiglu(rng, E2, d, 80);
  using bank = moe::mixed_experts<fp32, fp32>;
  const bank mixed(moe_test::make_bank(small), moe_test::make_bank(big));
  CHECK(mixed.num_experts() == 8);
  CHECK(mixed.first_expert(1) == 3);
  CHECK(mixed.intermediate() == 80);
  const auto router_w = rng.matrix(8, d);
  moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = 3, .renormalize = true}), mixed,
                                                        moe::device::cpu{2});
  moe::layer<moe::top_k<>, bank, moe::device::serial> serial(moe::top_k<>(router_w, {.k = 3, .renormalize = true}), mixed);
  for (const index T : {1, 9, 100}) {
    const auto x = rng.matrix(T, d);
    moe::row_matrix<float> y(T, d), ys(T, d);
    layer.forward(x, y);
    serial.forward(x, ys);
    INFO("T = " << T);
    CHECK(moe_test::bitwise_equal(y, ys));
    const auto want = moe_test::plan_reference(layer.plan(), x, [&](index e, const float* xt, double wt, double* yt) {
      (e < E1 ? small : big).accumulate(e < E1 ? e : e - E1, xt, wt, yt);
    });
    CHECK(moe_test::relative_error(y, want) < 1e-5);
    const moe::row_matrix<float> x0 = x.row(0);
    moe::row_matrix<float> y0(1, d);
    layer.forward(x0, y0);
    CHECK(moe_test::bitwise_equal_rows(y0, y, 0));
  }
}

TEST_CASE("mixed bank: fp32 experts beside Q4_K experts, one part gives that part's bits", "[experts][mixed]") {
  moe_test::rng rng(62);
  const index d = 256, f = 64;
  const auto a = moe_test::random_swiglu(rng, 2, d, f);
  const auto q = moe_test::random_swiglu(rng, 4, d, 256);
  using qbank = moe::gated_mlp_experts<fm::q4_k>;
  using bank = moe::mixed_experts<fp32, qbank>;
  const auto router_w = rng.matrix(6, d);
  moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(moe::top_k<>(router_w, {.k = 2}),
                                                        bank(moe_test::make_bank(a), qbank(q.gate, q.up, q.down)),
                                                        moe::device::cpu{2});
  // Reference: per slot, the fp32 part's naive expert or the Q4_K part's naive expert on its
  // dequantised weights (the quantized kernels' int8 activations bound the difference).
  const auto qd = moe_test::dequantised<fm::q4_k>(q);
  const index T = 17;
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  index in_q = 0;
  const auto want = moe_test::plan_reference(layer.plan(), x, [&](index e, const float* xt, double wt, double* yt) {
    in_q += e >= 2;
    (e < 2 ? a : qd).accumulate(e < 2 ? e : e - 2, xt, wt, yt);
  });
  CHECK(in_q > 0);
  CHECK(in_q < 2 * T);  // both parts are used
  CHECK(moe_test::relative_error(y, want) < 3e-2);
  moe::layer<moe::top_k<>, moe::mixed_experts<fp32>, moe::device::cpu> one(
      moe::top_k<>(router_w.topRows(2), {.k = 2}), moe::mixed_experts<fp32>(moe_test::make_bank(a)), moe::device::cpu{2});
  moe::layer<moe::top_k<>, fp32, moe::device::cpu> plain(moe::top_k<>(router_w.topRows(2), {.k = 2}), moe_test::make_bank(a),
                                                        moe::device::cpu{2});
  moe::row_matrix<float> y1(T, d), y2(T, d);
  one.forward(x, y1);
  plain.forward(x, y2);
  CHECK(moe_test::bitwise_equal(y1, y2));
  const auto narrow = moe_test::random_swiglu(rng, 1, 32, 8);
  const auto mismatched = [&] { return moe::mixed_experts<fp32, fp32>(moe_test::make_bank(a), moe_test::make_bank(narrow)); };
  CHECK_THROWS_WITH(mismatched(), Catch::Contains("parameter 'part 1 hidden()' must be equal to 256, got 32"));
}

}  // namespace
