// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/layer.hpp: the generic layer against the naive reference, written once
// over the devices of support/devices.hpp (serial and cpu here; mpi under mpirun in
// moe_mpi_tests, which compiles this file too).
#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <sstream>

#include <moe/moe.hpp>

#include "support/compare.hpp"
#include "support/devices.hpp"
#include "support/layers.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::bitwise_equal;
using moe_test::bitwise_equal_rows;
using moe_test::make_layer;

TEMPLATE_LIST_TEST_CASE(
    "layer output equals the naive reference for E in {1, 8, 64}, k in {1, 2, 8}, T in {0, 1, 7, 513}", "[layer]",
    moe_test::devices) {
  moe_test::rng rng(31);
  const index d = 72, f = 40;
  for (const index E : {1, 8, 64}) {
    const auto w = moe_test::random_swiglu(rng, E, d, f);
    const auto router_w = rng.matrix(E, d);
    for (const int k : {1, 2, 8}) {
      if (k > E) continue;
      const bool renorm = k % 2 == 0;
      auto layer = make_layer<TestType>(moe::top_k<>(router_w, {.k = k, .renormalize = renorm}), w);
      for (const index T : {0, 1, 7, 513}) {
        const auto x = rng.matrix(T, d);
        moe::row_matrix<float> y(T, d);
        layer.forward(x, y);
        INFO("E = " << E << ", k = " << k << ", T = " << T);
        if (T == 0) {
          CHECK(layer.plan().num_tokens() == 0);
          continue;
        }
        CHECK(moe_test::relative_error(y, moe_test::naive_layer(router_w, w, x, k, renorm)) < 1e-5);
        CHECK(layer.stats().mean_experts_per_token == Approx(k));
      }
    }
  }
}

TEMPLATE_LIST_TEST_CASE("layer is batch invariant: a token's bits do not depend on the other tokens",
                        "[layer][determinism]", moe_test::devices) {
  moe_test::rng rng(32);
  const index E = 32, d = 64, f = 48, k = 4;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  auto layer = make_layer<TestType>(moe::top_k<>(router_w, {.k = k, .renormalize = true}), w);
  const index T = 41;
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);

  // Each token alone.
  for (index t = 0; t < T; t += 5) {
    moe::row_matrix<float> xt = x.row(t), yt(1, d);
    layer.forward(xt, yt);
    CHECK(bitwise_equal_rows(yt, y, t));
  }
  // Shuffled and mixed with 200 other tokens.
  const auto extra = rng.matrix(200, d);
  moe::row_matrix<float> big(T + 200, d);
  std::vector<index> order(static_cast<std::size_t>(T + 200));
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), rng.engine());
  for (index i = 0; i < T + 200; ++i) {
    const index src = order[static_cast<std::size_t>(i)];
    big.row(i) = src < T ? x.row(src) : extra.row(src - T);
  }
  moe::row_matrix<float> ybig(T + 200, d);
  layer.forward(big, ybig);
  for (index i = 0; i < T + 200; ++i) {
    const index src = order[static_cast<std::size_t>(i)];
    if (src < T) CHECK(bitwise_equal_rows(ybig.middleRows(i, 1), y, src));
  }
}

TEMPLATE_LIST_TEST_CASE("layer: every device gives the serial device's bits, shared experts included",
                        "[layer][determinism]", moe_test::devices) {
  moe_test::rng rng(33);
  const index E = 8, d = 48, f = 32, k = 2, T = 77;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto ws = moe_test::random_swiglu(rng, 1, d, 24);
  const auto router_w = rng.matrix(E, d);
  std::vector<float> gate(static_cast<std::size_t>(d));
  for (auto& g : gate) g = rng.uniform();
  const auto x = rng.matrix(T, d);
  using shared_t = moe::shared_experts<moe::swiglu_experts<float>>;
  moe::layer<moe::top_k<>, moe::swiglu_experts<float>, moe::device::serial> serial(
      moe::top_k<>(router_w, {.k = k}), moe_test::make_bank(w), shared_t(moe_test::make_bank(ws), gate));
  auto layer = make_layer<TestType>(moe::top_k<>(router_w, {.k = k}), w, shared_t(moe_test::make_bank(ws), gate));
  CHECK(layer.has_shared_experts());
  moe::row_matrix<float> y1(T, d), y2(T, d);
  serial.forward(x, y1);
  layer.forward(x, y2);
  CHECK(bitwise_equal(y1, y2));
  // Shared part: y - routed part equals sigmoid(gate · x) · Shared(x).
  auto want = moe_test::naive_layer(router_w, w, x, k, false);
  for (index t = 0; t < T; ++t) {
    double logit = 0;
    for (index i = 0; i < d; ++i) logit += static_cast<double>(gate[static_cast<std::size_t>(i)]) * x(t, i);
    ws.accumulate(0, x.data() + t * d, 1.0 / (1.0 + std::exp(-logit)), want.data() + t * d);
  }
  CHECK(moe_test::relative_error(y2, want) < 1e-5);
}

TEMPLATE_LIST_TEST_CASE("layer: route() returns the plan and stats() summarise it", "[layer]", moe_test::devices) {
  moe_test::rng rng(34);
  const index E = 8, d = 16, f = 8;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  auto layer = make_layer<TestType>(moe::top_k<>(rng.matrix(E, d), {.k = 2}), w);
  const auto x = rng.matrix(50, d);
  const auto& plan = layer.route(x);
  CHECK(plan.num_tokens() == 50);
  CHECK(plan.has_expert_major());
  const auto s = layer.stats();
  CHECK(s.assignments == 100);
  index total = 0;
  for (auto l : s.load) total += l;
  CHECK(total == 100);
  CHECK(s.routing_entropy > 0.0);
  CHECK(s.routing_entropy < std::log(8.0) + 1e-6);
  std::ostringstream out;
  out << s;
  CHECK(out.str().find("mean experts/token 2.000") != std::string::npos);
}

TEMPLATE_LIST_TEST_CASE("layer: bad configurations and shapes throw moe::error naming the parameter", "[layer][error]",
                        moe_test::devices) {
  moe_test::rng rng(35);
  const auto w = moe_test::random_swiglu(rng, 4, 8, 4);
  CHECK_THROWS_WITH(make_layer<TestType>(moe::top_k<>(rng.matrix(5, 8), {.k = 2}), w),
                    Catch::Contains("parameter 'router.num_experts()' must be equal to 4, got 5"));
  CHECK_THROWS_WITH(make_layer<TestType>(moe::top_k<>(rng.matrix(4, 9), {.k = 2}), w),
                    Catch::Contains("parameter 'router.hidden()' must be equal to 8, got 9"));
  auto layer = make_layer<TestType>(moe::top_k<>(rng.matrix(4, 8), {.k = 2}), w);
  moe::row_matrix<float> x(3, 8), y(3, 8), y_short(2, 8), x_wide(3, 9), y_wide(3, 9);
  x.setOnes();
  CHECK_THROWS_WITH(layer.forward(x_wide, y_wide), Catch::Contains("parameter 'x.cols()' must be equal to 8, got 9"));
  CHECK_THROWS_WITH(layer.forward(x, y_short), Catch::Contains("parameter 'y.rows()' must be equal to 3, got 2"));
  CHECK_THROWS_WITH(layer.forward(x, x), Catch::Contains("parameter 'y' must not overlap 'x'"));
  x(1, 3) = std::numeric_limits<float>::quiet_NaN();
  // Non-finite token states are refused at the entry of forward (and of route), naming the element.
  CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("parameter 'x' has a non-finite value nan at (1, 3)"));
  CHECK_THROWS_WITH(layer.route(x), Catch::Contains("parameter 'x' has a non-finite value nan at (1, 3)"));
  x(1, 3) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("parameter 'x' has a non-finite value -inf at (1, 3)"));
  // On request they propagate: the router then sees the NaN logit and applies its own NaN policy.
  layer.set_nonfinite(moe::nonfinite_policy::propagate);
  CHECK(layer.nonfinite() == moe::nonfinite_policy::propagate);
  x(1, 3) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(layer.forward(x, y), Catch::Contains("NaN router logit (token 1"));
  x(1, 3) = 1.0f;
  x(2, 7) = std::numeric_limits<float>::max();
  layer.forward(x, y);  // finite extremes are legal
  CHECK(y.row(0).allFinite());
}

TEMPLATE_LIST_TEST_CASE("layer and routers take any row-major Eigen matrix, map or block, const or not",
                        "[layer][views]", moe_test::devices) {
  moe_test::rng rng(37);
  const auto w = moe_test::random_swiglu(rng, 4, 8, 6);
  const moe::top_k<> r(rng.matrix(4, 8), {.k = 2});
  auto layer = make_layer<TestType>(r, w);
  moe::row_matrix<float> x = rng.matrix(6, 8), y(6, 8), y2(6, 8);
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  r.route(moe::view(x), {}, plan, ws);  // a non-const matrix: no std::as_const needed
  const auto want = plan.all_experts();
  const std::vector<std::int32_t> experts(want.begin(), want.end());
  ws.reset();
  const Eigen::Map<const moe::row_matrix<float>> cx(x.data(), 6, 8);
  r.route(moe::view(cx), {}, plan, ws);
  CHECK(std::vector<std::int32_t>(plan.all_experts().begin(), plan.all_experts().end()) == experts);
  layer.forward(x, y);
  layer.forward(cx, moe::view(y2));
  CHECK(bitwise_equal(y, y2));
  auto top = x.topRows(3);
  moe::row_matrix<float> y3(3, 8);
  layer.forward(top, y3);
  CHECK(bitwise_equal_rows(y3, y, 0));  // batch invariant
  // Statistics say "n/a" for what the plan does not hold (a router without entropy: none here
  // after an empty batch).
  const moe::row_matrix<float> empty(0, 8);
  layer.route(empty);
  std::ostringstream out;
  out << layer.stats();
  CHECK(out.str().find("routing entropy n/a") != std::string::npos);
  CHECK(out.str().find("nan") == std::string::npos);
}

TEMPLATE_LIST_TEST_CASE("layer: a second forward of the same batch gives the same output", "[layer]",
                        moe_test::devices) {
  moe_test::rng rng(36);
  const auto w = moe_test::random_swiglu(rng, 8, 32, 16);
  auto layer = make_layer<TestType>(moe::top_k<>(rng.matrix(8, 32), {.k = 2}), w);
  const auto x = rng.matrix(64, 32);
  moe::row_matrix<float> y(64, 32), y2(64, 32);
  layer.forward(x, y);
  layer.forward(x, y2);
  CHECK(bitwise_equal(y, y2));
}

}  // namespace
