// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/adaptive_k.hpp: entropy-adaptive k (TensorRT-LLM AdaptiveK rule)
// and top-p with a minimum k, against hand-computed examples and brute force.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <moe/routing/routers/adaptive_k.hpp>

#include "../../support/naive.hpp"
#include "../../support/random.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe_test::route_logits;
constexpr float inf = std::numeric_limits<float>::infinity();

namespace {
moe::row_matrix<float> identity(index E) {
  moe::row_matrix<float> w(E, E);
  w.setIdentity();
  return w;
}

double entropy(const std::vector<double>& p) {
  double h = 0;
  for (double v : p) h -= v > 0 ? v * std::log(v) : 0.0;
  return h;
}

std::vector<float> row(const moe::row_matrix<float>& z, index t) { return {z.row(t).begin(), z.row(t).end()}; }
}  // namespace

TEST_CASE("adaptive_k: hand-computed example with normalised entropy", "[routing][adaptive_k]") {
  // E = 4, k_min 1, k_mid 2, k_max 3, thresholds 0.625 / 0.8175 on H / ln 4.
  moe::row_matrix<float> z(3, 4);
  z << 10, 0, 0, 0,  // p0 ~ 0.99986: h ~ 0.0012 -> k_min = 1
      2, 1, 0, 0,    // p = [0.6103, 0.2245, 0.0826, 0.0826]: H = 1.048705, h = 0.756481 -> k_mid = 2
      0, 0, 0, 0;    // uniform: h = 1 -> k_max = 3
  const moe::adaptive_k<> r(identity(4), {.k_min = 1, .k_mid = 2, .k_max = 3});
  CHECK(r.max_slots() == 3);
  const auto plan = route_logits(r, z);
  CHECK(plan.active_slots(0) == 1);
  CHECK(plan.expert(0, 0) == 0);
  CHECK(plan.weight(0, 0) == 1.0f);
  const double h1 = entropy(moe_test::naive_softmax(row(z, 1)));
  CHECK(h1 == Approx(1.048705).margin(1e-6));
  CHECK(h1 / std::log(4.0) == Approx(0.756481).margin(1e-6));
  CHECK(plan.active_slots(1) == 2);
  CHECK(plan.expert(1, 0) == 0);
  CHECK(plan.expert(1, 1) == 1);
  CHECK(golden(plan.weight(1, 0), 0.731059));  // e² / (e² + e) = sigmoid(1)
  CHECK(golden(plan.weight(1, 1), 0.268941));
  CHECK(plan.active_slots(2) == 3);
  CHECK(std::vector<int>{plan.expert(2, 0), plan.expert(2, 1), plan.expert(2, 2)} == std::vector<int>{0, 1, 2});
  CHECK(golden(plan.weight(2, 2), 1.0 / 3));
  CHECK(golden(plan.entropy(1), h1));
  const auto s = r.policy_stats(plan);
  CHECK(s.mean_k == Approx(2.0));
  CHECK(s.tokens_with == std::vector<index>{0, 1, 1, 1});
}

TEST_CASE("adaptive_k: TensorRT-LLM's rule in nats (1.3 / 1.7, k_mid = (k_min + k_max) / 2)", "[routing][adaptive_k]") {
  const moe::adaptive_k<> r(identity(8), {.k_min = 2, .k_max = 8, .low = 1.3f, .high = 1.7f,
                                          .scale = moe::entropy_scale::nats});
  CHECK(r.options().k_mid == 5);
  // The thresholds: h < low -> k_min, low <= h < high -> k_mid, h >= high -> k_max.
  CHECK(r.k_for_entropy(1.29f) == 2);
  CHECK(r.k_for_entropy(1.3f) == 5);
  CHECK(r.k_for_entropy(1.69f) == 5);
  CHECK(r.k_for_entropy(1.7f) == 8);
  moe::row_matrix<float> z(3, 8);
  z << 6, 1, 0, 0, 0, 0, 0, 0,   // confident
      2, 2, 1, 1, 0, 0, -1, -1,  // H between 1.3 and 1.7
      0, 0, 0, 0, 0, 0, 0, 0;    // H = ln 8 = 2.079
  const auto plan = route_logits(r, z);
  for (index t = 0; t < 3; ++t) {
    const double H = entropy(moe_test::naive_softmax(row(z, t)));
    const index want_k = H < 1.3 ? 2 : (H < 1.7 ? 5 : 8);
    INFO("token " << t << ", H = " << H);
    CHECK(plan.active_slots(t) == want_k);
  }
  CHECK(plan.active_slots(0) == 2);
  CHECK(plan.active_slots(1) == 5);
  CHECK(plan.active_slots(2) == 8);
}

TEST_CASE("adaptive_k equals brute force on random tokens", "[routing][adaptive_k]") {
  moe_test::rng rng(901);
  const index E = 16, T = 300;
  const auto z = rng.matrix(T, E, 4.0f);
  for (const bool renorm : {true, false}) {
    const moe::adaptive_k<> r(identity(E), {.k_min = 1, .k_mid = 3, .k_max = 6, .low = 0.6f, .high = 0.85f,
                                            .renormalize = renorm, .route_scale = 2.0f});
    const auto plan = route_logits(r, z);
    index checked = 0;
    for (index t = 0; t < T; ++t) {
      const auto p = moe_test::naive_softmax(row(z, t));
      const double h = entropy(p) / std::log(static_cast<double>(E));
      if (std::abs(h - 0.6) < 1e-5 || std::abs(h - 0.85) < 1e-5) continue;  // too close to call in float
      ++checked;
      const index k = h < 0.6 ? 1 : (h < 0.85 ? 3 : 6);
      const auto want = moe_test::naive_top_k(row(z, t), k, false, renorm, 2.0);
      REQUIRE(plan.active_slots(t) == k);
      for (index s = 0; s < k; ++s) {
        REQUIRE(plan.expert(t, s) == want.experts[static_cast<std::size_t>(s)]);
        REQUIRE(plan.weight(t, s) == Approx(want.weights[static_cast<std::size_t>(s)]).epsilon(2e-6));
      }
    }
    CHECK(checked > 290);
    const auto s = r.policy_stats(plan);
    CHECK(s.tokens_with[1] > 0);  // the example exercises all three k
    CHECK(s.tokens_with[3] > 0);
    CHECK(s.tokens_with[6] > 0);
  }
}

TEST_CASE("top_p: hand-computed examples with a minimum k", "[routing][top_p]") {
  // p = softmax([2, 1, 0, 0]) = [0.6103, 0.2245, 0.0826, 0.0826]; cumulative 0.6103, 0.8348, 0.9174, 1.
  moe::row_matrix<float> z(1, 4);
  z << 2, 1, 0, 0;
  auto k_of = [&](moe::top_p_options o) { return route_logits(moe::top_p<>(identity(4), o), z).active_slots(0); };
  CHECK(k_of({.p = 0.5f, .k_min = 1, .k_max = 4}) == 1);
  CHECK(k_of({.p = 0.5f, .k_min = 2, .k_max = 4}) == 2);  // the minimum k
  CHECK(k_of({.p = 0.8f, .k_min = 1, .k_max = 4}) == 2);
  CHECK(k_of({.p = 0.9f, .k_min = 1, .k_max = 4}) == 3);  // expert 2 before 3 (tie: lower index)
  CHECK(k_of({.p = 0.9f, .k_min = 1, .k_max = 2}) == 2);  // capped at k_max
  CHECK(k_of({.p = 1.0f, .k_min = 1, .k_max = 4}) == 4);
  const auto plan = route_logits(moe::top_p<>(identity(4), {.p = 0.9f, .k_min = 1, .k_max = 4}), z);
  CHECK(std::vector<int>{plan.expert(0, 0), plan.expert(0, 1), plan.expert(0, 2), plan.expert(0, 3)} ==
        std::vector<int>{0, 1, 2, moe::no_expert});
  const double p0 = 0.610296, p1 = 0.224515, p2 = 0.082595;
  CHECK(golden(plan.weight(0, 0), p0 / (p0 + p1 + p2)));
  CHECK(golden(plan.weight(0, 2), p2 / (p0 + p1 + p2)));
  // -inf experts are never selected, even to reach k_min.
  moe::row_matrix<float> zi(1, 4);
  zi << 1, -inf, -inf, -inf;
  CHECK(route_logits(moe::top_p<>(identity(4), {.p = 0.5f, .k_min = 3, .k_max = 4}), zi).active_slots(0) == 1);
}

TEST_CASE("top_p equals brute force on random tokens", "[routing][top_p]") {
  moe_test::rng rng(902);
  const index E = 12, T = 250;
  const auto z = rng.matrix(T, E, 3.0f);
  for (const auto& [pp, kmin, kmax] : {std::tuple<float, int, int>{0.5f, 1, 6}, {0.75f, 2, 8}, {0.95f, 1, 12}}) {
    const moe::top_p<> r(identity(E), {.p = pp, .k_min = kmin, .k_max = kmax});
    const auto plan = route_logits(r, z);
    for (index t = 0; t < T; ++t) {
      const auto p = moe_test::naive_softmax(row(z, t));
      const auto order = moe_test::brute_force_top_k(row(z, t), E);
      double mass = 0;
      index k = 0;
      bool close = false;
      while (k < kmax) {
        mass += p[static_cast<std::size_t>(order[static_cast<std::size_t>(k++)])];
        close |= std::abs(mass - pp) < 1e-5;
        if (mass >= pp) break;
      }
      if (close) continue;  // too close to call in float
      k = std::max<index>(k, kmin);
      INFO("p " << pp << ", token " << t);
      const auto want = moe_test::naive_top_k(row(z, t), k, false, true);
      REQUIRE(plan.active_slots(t) == k);
      for (index s = 0; s < k; ++s) {
        REQUIRE(plan.expert(t, s) == want.experts[static_cast<std::size_t>(s)]);
        REQUIRE(plan.weight(t, s) == Approx(want.weights[static_cast<std::size_t>(s)]).epsilon(2e-6));
      }
    }
  }
}

TEST_CASE("adaptive k: sigmoid gates, empty input and NaN", "[routing][adaptive_k][top_p]") {
  moe::row_matrix<float> z(2, 4);
  z << 3, -3, -3, -3, 0, 0, 0, 0;
  const moe::adaptive_k<moe::sigmoid_gate> a(identity(4), {.k_min = 1, .k_mid = 2, .k_max = 4});
  const auto pa = route_logits(a, z);
  CHECK(pa.active_slots(0) == 1);  // normalised sigmoid scores [0.95, 0.05, ...]: low entropy
  CHECK(pa.active_slots(1) == 4);
  const moe::top_p<moe::sigmoid_gate> b(identity(4), {.p = 0.5f, .k_min = 1, .k_max = 4});
  CHECK(route_logits(b, z).active_slots(1) == 2);  // equal scores: 2 of 4 reach half the mass
  const moe::row_matrix<float> empty(0, 4);
  CHECK(route_logits(a, empty).num_tokens() == 0);
  CHECK(route_logits(b, empty).num_tokens() == 0);
  z(1, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(route_logits(a, z), Catch::Contains("NaN router logit (token 1, expert 2)"));
  CHECK_THROWS_WITH(route_logits(b, z), Catch::Contains("NaN router logit (token 1, expert 2)"));
}

TEST_CASE("adaptive k: bad configurations throw moe::error naming the parameter", "[routing][adaptive_k][top_p][error]") {
  const auto w = identity(4);
  auto ak = [&](moe::adaptive_k_options o) { return moe::adaptive_k<>(w, o); };
  CHECK_THROWS_WITH(ak({.k_min = 0, .k_max = 2}), Catch::Contains("parameter 'k_min'"));
  CHECK_THROWS_WITH(ak({.k_min = 2, .k_max = 5}), Catch::Contains("parameter 'k_max'"));
  CHECK_THROWS_WITH(ak({.k_min = 3, .k_max = 2}), Catch::Contains("parameter 'k_max'"));
  CHECK_THROWS_WITH(ak({.k_min = 2, .k_mid = 4, .k_max = 3}), Catch::Contains("parameter 'k_mid'"));
  CHECK_THROWS_WITH(ak({.k_min = 1, .k_max = 3, .low = std::nanf("")}), Catch::Contains("parameter 'low'"));
  CHECK_THROWS_WITH(ak({.k_min = 1, .k_max = 3, .low = 0.9f, .high = 0.5f}), Catch::Contains("parameter 'high'"));
  CHECK_THROWS_WITH(ak({.k_min = 1, .k_max = 3, .temperature = 0.0f}), Catch::Contains("parameter 'temperature'"));
  auto tp = [&](moe::top_p_options o) { return moe::top_p<>(w, o); };
  CHECK_THROWS_WITH(tp({.p = 0.0f, .k_max = 2}), Catch::Contains("parameter 'p'"));
  CHECK_THROWS_WITH(tp({.p = 1.5f, .k_max = 2}), Catch::Contains("parameter 'p'"));
  CHECK_THROWS_WITH(tp({.p = 0.5f, .k_min = 0, .k_max = 2}), Catch::Contains("parameter 'k_min'"));
  CHECK_THROWS_WITH(tp({.p = 0.5f, .k_max = 9}), Catch::Contains("parameter 'k_max'"));
}

}  // namespace
