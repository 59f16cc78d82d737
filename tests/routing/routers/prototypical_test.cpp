// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/prototypical.hpp: ProMoE prototypical and conditional routing (§8).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/routing/routers/prototypical.hpp>

#include "../../support/naive.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;
using act = moe::prototype_activation;

moe::row_matrix<float> golden_prototypes() { return moe_test::fmatrix({{1, 0}, {0, 1}, {-1, -1}}); }
moe::row_matrix<float> golden_x() { return moe_test::fmatrix({{2, 0}, {1, 1}, {0, -3}, {5, 5}}); }
const std::vector<std::uint8_t> golden_cond = {1, 1, 1, 0};  // token 3 unconditional

TEST_CASE("prototypical: golden example of spec §8, identity gates", "[routing][prototypical][golden]") {
  const moe::prototypical r(golden_prototypes(), {.k = 1});
  CHECK(r.num_experts() == 4);  // 3 routed + 1 unconditional
  CHECK(r.num_routed() == 3);
  CHECK(r.max_slots() == 1);
  const auto plan = moe_test::route(r, golden_x(), {.conditional = golden_cond});
  check_slots(plan, 0, {0}, {1.0});
  check_slots(plan, 1, {0}, {0.707107});  // tie 0/1 -> lower index
  check_slots(plan, 2, {2}, {0.707107});
  check_slots(plan, 3, {3}, {1.0});  // the unconditional expert N_E, weight 1
  const auto s = r.policy_stats(plan);
  CHECK(s.conditional_tokens == 3);
  CHECK(s.unconditional_tokens == 1);
  CHECK(s.negative_gates == 0);
  CHECK(!plan.has_entropy());
}

TEST_CASE("prototypical: golden sigmoid and softmax gates of spec §8", "[routing][prototypical][golden]") {
  const moe::prototypical sig(golden_prototypes(), {.k = 1, .activation = act::sigmoid});
  const auto ps = moe_test::route(sig, golden_x(), {.conditional = golden_cond});
  check_slots(ps, 0, {0}, {0.731059});
  check_slots(ps, 1, {0}, {0.669762});
  check_slots(ps, 2, {2}, {0.669762});
  check_slots(ps, 3, {3}, {1.0});
  const moe::prototypical soft(golden_prototypes(), {.k = 1, .activation = act::softmax});
  const auto pm = moe_test::route(soft, golden_x(), {.conditional = golden_cond});
  check_slots(pm, 0, {0}, {0.645466});
  check_slots(pm, 1, {0}, {0.458423});
  check_slots(pm, 2, {2}, {0.597208});
  check_slots(pm, 3, {3}, {1.0});
  CHECK(pm.has_entropy());
  CHECK(pm.entropy(3) == 0.0f);
}

TEST_CASE("prototypical: top-K without renormalisation, negative gates, alpha", "[routing][prototypical]") {
  const moe::prototypical r(golden_prototypes(), {.k = 3, .alpha = 2.0f});
  const auto plan = moe_test::route(r, golden_x());  // no mask: every token conditional
  // t0 cos = [1, 0, -0.707107] -> all three, gates = 2 · cos (no renormalisation, one negative).
  check_slots(plan, 0, {0, 1, 2}, {2.0, 0.0, -2 * 0.707107});
  check_slots(plan, 3, {0, 1, 2}, {2 * 0.707107, 2 * 0.707107, -2.0});  // [5,5] is conditional now
  CHECK(r.policy_stats(plan).negative_gates == 4);
  CHECK(r.policy_stats(plan).unconditional_tokens == 0);
}

TEST_CASE("prototypical: zero token and zero prototype give cosine 0, ties to the lowest index",
          "[routing][prototypical]") {
  const moe::prototypical r(moe_test::fmatrix({{0, 0}, {-1, 0}, {0, 2}}), {.k = 2});
  const auto plan = moe_test::route(r, moe_test::fmatrix({{0, 0}, {1, 0}}));
  check_slots(plan, 0, {0, 1}, {0.0, 0.0});
  check_slots(plan, 1, {0, 2}, {0.0, 0.0});  // cos = [0 (zero prototype), -1, 0]
}

TEST_CASE("prototypical: several unconditional experts each get weight 1", "[routing][prototypical]") {
  const moe::prototypical r(golden_prototypes(), {.k = 1, .unconditional_experts = 2});
  CHECK(r.num_experts() == 5);
  CHECK(r.max_slots() == 2);
  const auto plan = moe_test::route(r, golden_x(), {.conditional = golden_cond});
  check_slots(plan, 0, {0, moe::no_expert}, {1.0, 0.0});
  check_slots(plan, 3, {3, 4}, {1.0, 1.0});
}

TEST_CASE("prototypical equals a naive cosine reference on random tokens", "[routing][prototypical]") {
  moe_test::rng rng(801);
  const index N = 9, d = 37, T = 80;
  const auto P = rng.matrix(N, d);
  const auto x = rng.matrix(T, d);
  std::vector<std::uint8_t> cond(T);
  for (auto& c : cond) c = rng.integer(0, 3) != 0;
  for (const auto a : {act::identity, act::sigmoid, act::softmax}) {
    const moe::prototypical r(P, {.k = 3, .alpha = 1.5f, .activation = a, .unconditional_experts = 2});
    const auto plan = moe_test::route(r, x, {.conditional = cond});
    for (index t = 0; t < T; ++t) {
      if (!cond[t]) {
        check_slots(plan, t, {9, 10, moe::no_expert}, {1, 1, 0});
        continue;
      }
      std::vector<float> z(N);
      std::vector<double> zd(N);
      const double nx = x.row(t).cast<double>().norm();
      for (index j = 0; j < N; ++j) {
        zd[j] = 1.5 * x.row(t).cast<double>().dot(P.row(j).cast<double>()) / (nx * P.row(j).cast<double>().norm());
        z[j] = static_cast<float>(zd[j]);
      }
      const auto sel = moe_test::brute_force_top_k(z, 3);
      double total = 0;
      for (double v : zd) total += std::exp(v);
      for (index s = 0; s < 3; ++s) {
        const double v = zd[sel[s]];
        const double want = a == act::identity ? v : a == act::sigmoid ? 1 / (1 + std::exp(-v)) : std::exp(v) / total;
        REQUIRE(plan.expert(t, s) == sel[s]);
        REQUIRE(plan.weight(t, s) == Approx(want).margin(2e-6));
      }
    }
  }
}

TEST_CASE("prototypical: errors name the parameter", "[routing][prototypical][error]") {
  const auto P = golden_prototypes();
  moe_test::throws_naming([&] { moe::prototypical(P, {.k = 4}); }, "k");  // K > N_E
  moe_test::throws_naming([&] { moe::prototypical(P, {.k = 0}); }, "k");
  moe_test::throws_naming([&] { moe::prototypical(P, {.alpha = 0.0f}); }, "alpha");
  moe_test::throws_naming([&] { moe::prototypical(P, {.unconditional_experts = -1}); }, "unconditional_experts");
  moe_test::throws_naming([&] { moe::prototypical(P, {.eps = -1.0f}); }, "eps");
  // eps = 0 would give a zero token the cosines 0 / 0 = NaN.
  moe_test::throws_naming([&] { moe::prototypical(P, {.eps = 0.0f}); }, "eps");
  moe_test::throws_naming([&] { moe::prototypical(P, {.eps = std::numeric_limits<float>::infinity()}); }, "eps");
  auto bad = P;
  bad(1, 1) = std::numeric_limits<float>::infinity();
  moe_test::throws_naming([&] { moe::prototypical{bad}; }, "prototypes");
  const moe::prototypical r(P);
  moe_test::throws_naming([&] { moe_test::route(r, moe::row_matrix<float>::Zero(2, 3)); }, "x.cols()");
  const std::vector<std::uint8_t> short_mask = {1, 0};
  moe_test::throws_naming([&] { moe_test::route(r, golden_x(), {.conditional = short_mask}); }, "ctx.conditional.size()");
  const moe::prototypical no_uncond(P, {.unconditional_experts = 0});
  moe_test::throws_naming([&] { moe_test::route(no_uncond, golden_x(), {.conditional = golden_cond}); },
                          "ctx.conditional");
  auto x = golden_x();
  x(1, 0) = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe_test::route(r, x); }, "x");
  const moe::prototypical sanitised(P, {.k = 2, .nan = moe::nan_policy::to_neg_inf});
  CHECK(moe_test::route(sanitised, x).active_slots(1) == 0);  // every cosine NaN -> -inf
  CHECK(moe_test::route(r, moe::row_matrix<float>(0, 2)).num_tokens() == 0);
}

}  // namespace
