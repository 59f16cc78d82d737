// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/blockffn.hpp: BlockFFN's ReLU + RMSNorm router (§11).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/routing/routers/blockffn.hpp>

#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;
constexpr float inf = std::numeric_limits<float>::infinity();

moe::row_matrix<float> golden_r() {
  return moe_test::fmatrix({{1, -1, 2, 0}, {0.5, -0.5, 1, -2}, {-1, -2, -3, -0.5}, {0, 3, 0, 1}});
}

TEST_CASE("blockffn: golden example of spec §11", "[routing][blockffn][golden]") {
  const moe::blockffn r(moe_test::eye(4), {.chunk_length = 2});
  CHECK(r.max_slots() == 4);
  const auto plan = moe_test::route(r, golden_r());  // x = r
  check_slots(plan, 0, {2, 0, moe::no_expert}, {1.788847, 0.894424, 0});  // active {0, 2}, by descending score
  check_slots(plan, 1, {2, 0, moe::no_expert}, {1.788826, 0.894413, 0});
  check_slots(plan, 2, {moe::no_expert}, {0});                           // all <= 0: no expert
  check_slots(plan, 3, {1, 3, moe::no_expert}, {1.897363, 0.632454, 0});  // exact zeros are inactive
  const auto s = r.policy_stats(plan);
  CHECK(s.token_sparsity == Approx(0.625));  // 1 - 6/16
  CHECK(s.chunk_sparsity == Approx(0.5));    // chunks use [2, 2] experts
  CHECK(s.chunk_length == 2);
  CHECK(s.mean_experts_per_token == Approx(1.5));
  CHECK(moe::chunk_sparsity(plan, 4) == Approx(1 - 4.0 / 4));  // one chunk using all four experts
  CHECK(moe::chunk_sparsity(plan, 3) == Approx(1 - (2.0 / 4 + 2.0 / 4) / 2));  // chunks [0,3), [3,4)
  const std::vector<index> starts = {0, 1};  // chunks per sequence: {t0}, {t1, t2}, {t3}
  CHECK(moe::chunk_sparsity(plan, 2, starts) == Approx(1 - (2.0 / 4 + 2.0 / 4 + 2.0 / 4) / 3));
}

TEST_CASE("blockffn: gain, +inf scores, NaN", "[routing][blockffn][inf]") {
  const moe::blockffn gained(moe_test::eye(4), {.gain = {2, 1, -1, 1}});
  const auto plan = moe_test::route(gained, golden_r());
  check_slots(plan, 0, {2, 0}, {-1.788847, 2 * 0.894424});  // gate = â ⊙ gamma, negative gamma allowed
  const moe::blockffn r(moe_test::eye(4));
  const auto pi = moe_test::route_logits(r, moe_test::fmatrix({{inf, 1, inf, -inf}, {1e30, 0, 0, 0}}));
  check_slots(pi, 0, {0, 2, moe::no_expert}, {std::sqrt(2.0), std::sqrt(2.0), 0});  // limit of the RMSNorm
  check_slots(pi, 1, {0, moe::no_expert}, {2.0, 0});  // no overflow of a² (RMSNorm in double)
  auto bad = golden_r();
  bad(1, 1) = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe_test::route_logits(r, bad); }, "z");
  const moe::blockffn sanitised(moe_test::eye(4), {.nan = moe::nan_policy::to_neg_inf});
  CHECK(moe_test::route_logits(sanitised, bad).active_slots(1) == 2);
}

TEST_CASE("blockffn equals a naive reference on random tokens", "[routing][blockffn]") {
  moe_test::rng rng(1101);
  const index E = 40, d = 32, T = 64;
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  std::vector<float> gain(E);
  for (auto& g : gain) g = rng.uniform(0.5f, 1.5f);
  const moe::blockffn r(w, {.gain = gain});
  const auto plan = moe_test::route(r, x);
  for (index t = 0; t < T; ++t) {
    std::vector<double> rt(E);
    double sq = 0;
    for (index e = 0; e < E; ++e) {
      float acc = 0;
      for (index k = 0; k < d; ++k) acc = std::fma(x(t, k), w(e, k), acc);
      rt[e] = acc;
      sq += acc > 0 ? double(acc) * acc : 0.0;
    }
    const double rho = std::sqrt(sq / E + 1e-5);
    std::vector<int> order;
    for (index e = 0; e < E; ++e)
      if (rt[e] > 0) order.push_back(static_cast<int>(e));
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return rt[a] > rt[b]; });
    REQUIRE(plan.active_slots(t) == static_cast<index>(order.size()));
    for (std::size_t s = 0; s < order.size(); ++s) {
      REQUIRE(plan.expert(t, static_cast<index>(s)) == order[s]);
      REQUIRE(plan.weight(t, static_cast<index>(s)) == Approx(rt[order[s]] / rho * gain[order[s]]).epsilon(1e-6));
    }
  }
}

TEST_CASE("blockffn: errors name the parameter", "[routing][blockffn][error]") {
  const auto I = moe_test::eye(4);
  moe_test::throws_naming([&] { moe::blockffn(I, {.eps = -1.0f}); }, "eps");
  moe_test::throws_naming([&] { moe::blockffn(I, {.gain = {1, 1}}); }, "gain.size()");
  moe_test::throws_naming([&] { moe::blockffn(I, {.gain = {1, 1, inf, 1}}); }, "gain[e]");
  moe_test::throws_naming([&] { moe::blockffn(I, {.chunk_length = 0}); }, "chunk_length");
  const moe::blockffn r(I);
  moe_test::throws_naming([&] { moe_test::route(r, moe::row_matrix<float>::Zero(2, 3)); }, "x.cols()");
  moe::routing_plan p;
  p.reset(2, 1, 1);
  moe_test::throws_naming([&] { (void)moe::chunk_sparsity(p, 0); }, "chunk_length");
  const auto empty = moe_test::route(r, moe::row_matrix<float>(0, 4));
  CHECK(empty.num_tokens() == 0);
  CHECK(r.policy_stats(empty).chunk_sparsity == 0.0);
}

}  // namespace
