// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/depth/mixture_of_depths.hpp: docs/routing-spec.md §13.2, errata 1 and 9.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/routing/depth/mixture_of_depths.hpp>

#include "../../support/random.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
struct decided {
  moe::routing_plan plan;
  std::vector<int> passes;
  std::vector<float> scale;
};

decided decide(const moe::mod_capacity& mod, const moe::row_matrix<float>& x, const moe::route_context& ctx = {}) {
  decided out;
  moe::workspace ws;
  ws.reset();
  out.plan.reset(x.rows(), 1, 1);
  mod.decide(moe::view(x), ctx, out.plan, ws);
  for (index t = 0; t < x.rows(); ++t) {
    out.passes.push_back(out.plan.passes(t));
    out.scale.push_back(out.plan.output_scale(t));
  }
  return out;
}

decided decide_r(const moe::mod_capacity& mod, const std::vector<float>& r, const moe::route_context& ctx = {}) {
  decided out;
  moe::workspace ws;
  ws.reset();
  out.plan.reset(static_cast<index>(r.size()), 1, 1);
  mod.decide_logits(r, ctx, out.plan, ws);
  for (index t = 0; t < static_cast<index>(r.size()); ++t) {
    out.passes.push_back(out.plan.passes(t));
    out.scale.push_back(out.plan.output_scale(t));
  }
  return out;
}

moe::row_matrix<float> golden_x() {
  moe::row_matrix<float> x(4, 2);
  x << 1, 0, 0, 1, 2, 1, 1, 1;
  return x;
}
const std::vector<float> golden_w = {1.0f, -1.0f};
}  // namespace

TEST_CASE("mod: golden §13.2 (L=4, C=2, w=[1,-1])", "[mod][golden]") {
  const moe::mod_capacity mod(golden_w, {.capacity = 2});
  const auto x = golden_x();
  moe::workspace ws;
  ws.reset();
  std::vector<float> r(4);
  mod.router_logits(moe::view(x), r.data(), ws);
  CHECK(r == std::vector<float>{1, -1, 1, 0});
  const auto d = decide(mod, x);
  CHECK(d.passes == std::vector<int>{1, 0, 1, 0});  // I = [0, 2]
  // out = x + r_i f_i for the selected tokens, with the block deltas of the golden.
  const float f[4][2] = {{0.5f, 0.5f}, {0, 0}, {-1.0f, 0.0f}, {0, 0}};
  const float want[4][2] = {{1.5f, 0.5f}, {0, 1}, {1, 1}, {1, 1}};
  for (index t = 0; t < 4; ++t) {
    for (index i = 0; i < 2; ++i) {
      const float out = x(t, i) + (d.passes[t] ? d.scale[t] * f[t][i] : 0.0f);
      CHECK(golden(out, want[t][i]));
    }
  }
  // Causal rule sigmoid(r) > 0.5: token 3 has sigmoid(0) = 0.5 exactly and is not processed.
  const moe::mod_capacity causal(golden_w, {.decision = moe::mod_decision::causal});
  CHECK(decide(causal, x).passes == std::vector<int>{1, 0, 1, 0});
  CHECK(decide(causal, x).scale[0] == 1.0f);
}

TEST_CASE("mod: capacity edge cases: C = 0, C >= L, negative r, boundary ties, per sequence", "[mod]") {
  const auto x = golden_x();
  // C = 0: every token skips (the layer is the identity).
  CHECK(decide(moe::mod_capacity(golden_w, {.capacity = 0}), x).passes == std::vector<int>{0, 0, 0, 0});
  CHECK(decide(moe::mod_capacity(golden_w, {.capacity_fraction = 0.0}), x).passes == std::vector<int>{0, 0, 0, 0});
  // C >= L: every token runs, still scaled by r (negative r flips the delta; r = 0 zeroes it).
  for (const auto opt : {moe::mod_options{.capacity = 4}, moe::mod_options{.capacity = 100},
                         moe::mod_options{.capacity_fraction = 1.0}, moe::mod_options{.capacity_fraction = 3.5}}) {
    const auto d = decide(moe::mod_capacity(golden_w, opt), x);
    CHECK(d.passes == std::vector<int>{1, 1, 1, 1});
    CHECK(d.scale == std::vector<float>{1, -1, 1, 0});
  }
  // Sigmoid transform: the scale is sigmoid(r), never negative.
  const auto ds = decide(moe::mod_capacity(golden_w, {.capacity = 4, .weight_transform = moe::mod_weight_transform::sigmoid}), x);
  CHECK(golden(ds.scale[1], 0.268941));
  CHECK(ds.scale[3] == 0.5f);
  // Ties at the boundary: lower position wins.
  const moe::mod_capacity c2(golden_w, {.capacity = 2});
  CHECK(decide_r(c2, {0.5f, 0.7f, 0.5f, 0.5f, 0.1f}).passes == std::vector<int>{1, 1, 0, 0, 0});
  CHECK(decide_r(c2, {0.5f, 0.5f, 0.5f, 0.5f}).passes == std::vector<int>{1, 1, 0, 0});
  CHECK(decide_r(moe::mod_capacity(golden_w, {.capacity = 3}), {-1.0f, 2.0f, -1.0f, -1.0f}).passes ==
        std::vector<int>{1, 1, 1, 0});
  // Per sequence: top-C inside each sequence of route_context::sequence_starts; empty sequences are fine.
  const std::vector<index> starts = {0, 3, 3, 5};
  const auto dseq = decide_r(moe::mod_capacity(golden_w, {.capacity = 1}), {1, 3, 2, 0, -1, 5, 4}, {.sequence_starts = starts});
  CHECK(dseq.passes == std::vector<int>{0, 1, 0, 1, 0, 1, 0});
  // T = 0.
  CHECK(decide_r(c2, {}).passes.empty());
}

TEST_CASE("mod: capacity from a fraction is computed in double with the guard (errata 1)", "[mod]") {
  const std::vector<float> w(2, 1.0f);
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.55}).capacity(100) == 55);  // 55.00000000000001
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.07}).capacity(100) == 7);   // 7.000000000000001
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.29}).capacity(100) == 29);  // 28.999999999999996
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.125}).capacity(100) == 13);
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.125}).capacity(1) == 1);
  CHECK(moe::mod_capacity(w, {.capacity_fraction = 0.125}).capacity(0) == 0);
  CHECK(moe::mod_capacity(w, {.capacity = 5}).capacity(3) == 3);
  // Random sizes: the selected count is the capacity of each sequence.
  moe_test::rng rng(5);
  for (int rep = 0; rep < 20; ++rep) {
    const index T = rng.integer(1, 60);
    const double c = rng.uniform(0.0f, 1.0f);
    const moe::mod_capacity mod(w, {.capacity_fraction = c});
    const auto x = rng.matrix(T, 2);
    const auto d = decide(mod, x);
    index n = 0;
    for (int p : d.passes) n += p;
    CHECK(n == mod.capacity(T));
  }
}

TEST_CASE("mod: causal rule is strict (errata 9), decided on r itself, and per token", "[mod]") {
  const moe::mod_capacity causal(golden_w, {.decision = moe::mod_decision::causal});
  const float tiny = std::numeric_limits<float>::denorm_min();
  // sigmoid(r) > 0.5 is r > 0: sigmoid(tiny) and sigmoid(1e-9) round to 0.5f, yet r > 0 enters;
  // r = 0 (sigmoid exactly 0.5) does not.
  CHECK(decide_r(causal, {0.0f, -0.0f, 1e-3f, -1e-3f, tiny, -tiny, 1e-9f, -1e-9f, 20.0f}).passes ==
        std::vector<int>{0, 0, 1, 0, 1, 0, 1, 0, 1});
}

TEST_CASE("mod: errors name the parameter", "[mod][error]") {
  CHECK_THROWS_WITH(moe::mod_capacity(std::vector<float>{}), Catch::Contains("parameter 'router_weight.size()'"));
  CHECK_THROWS_WITH(moe::mod_capacity(std::vector<float>{1.0f, NAN}), Catch::Contains("parameter 'router_weight[1]'"));
  CHECK_THROWS_WITH(moe::mod_capacity(golden_w, {.capacity = -2}), Catch::Contains("parameter 'capacity'"));
  CHECK_THROWS_WITH(moe::mod_capacity(golden_w, {.capacity_fraction = -0.1}), Catch::Contains("parameter 'capacity_fraction'"));
  CHECK_THROWS_WITH(moe::mod_capacity(golden_w, {.capacity_fraction = NAN}), Catch::Contains("parameter 'capacity_fraction'"));
  const moe::mod_capacity mod(golden_w, {.capacity = 1});
  auto x = golden_x();
  x(2, 1) = NAN;
  CHECK_THROWS_WITH(decide(mod, x), Catch::Contains("parameter 'x' gives a non-finite router weight"));
  x(2, 1) = INFINITY;
  CHECK_THROWS_WITH(decide(mod, x), Catch::Contains("(token 2)"));
  moe::row_matrix<float> wide(2, 3);
  wide.setZero();
  CHECK_THROWS_WITH(decide(mod, wide), Catch::Contains("parameter 'x.cols()' must be equal to 2, got 3"));
  moe::routing_plan plan;
  plan.reset(3, 1, 1);
  moe::workspace ws;
  ws.reset();
  const auto x4 = golden_x();
  CHECK_THROWS_WITH(mod.decide(moe::view(x4), {}, plan, ws), Catch::Contains("parameter 'plan.num_tokens()'"));
}

}  // namespace
