// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/expert_choice.hpp: docs/routing-spec.md §6 (golden, k_c rounding and
// clamping, ties, the decode-time guard and its explicit fallbacks) and the layer.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <moe/layer.hpp>
#include <moe/routing/routers/expert_choice.hpp>

#include "../../support/layers.hpp"
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

// Naive expert choice in double: per expert, a stable sort of the tokens by S[:, e] (descending),
// the first k_c with a finite logit; each token lists its experts in ascending order.
std::vector<moe_test::naive_route> naive_expert_choice(const moe::row_matrix<float>& z, index kc) {
  const index T = z.rows(), E = z.cols();
  std::vector<std::vector<double>> S;
  for (index t = 0; t < T; ++t) S.push_back(moe_test::naive_softmax(std::vector<float>(z.row(t).begin(), z.row(t).end())));
  std::vector<moe_test::naive_route> out(static_cast<std::size_t>(T));
  for (index e = 0; e < E; ++e) {
    std::vector<index> order(static_cast<std::size_t>(T));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](index a, index b) { return S[a][e] > S[b][e]; });
    index taken = 0;
    for (const index t : order) {
      if (taken == kc) break;
      if (z(t, e) == -inf) continue;
      out[t].experts.push_back(static_cast<std::int32_t>(e));
      out[t].weights.push_back(S[t][e]);
      ++taken;
    }
  }
  return out;
}
}  // namespace

TEST_CASE("expert_choice: golden of spec §6", "[routing][expert_choice][golden]") {
  moe::row_matrix<float> z(4, 2);
  z << 2, 0, 1, 1, 0, 3, -1, 0;
  const moe::expert_choice r(identity(2), {.capacity_factor = 1.0});
  CHECK(r.tokens_per_expert(4) == 2);
  CHECK(r.max_slots() == 2);
  auto plan = route_logits(r, z);
  // Expert 0 picks tokens [0, 1] (gates 0.880797, 0.5); expert 1 picks [2, 3] (0.952574, 0.731059).
  CHECK(plan.expert(0, 0) == 0);
  CHECK(golden(plan.weight(0, 0), 0.880797));
  CHECK(plan.expert(1, 0) == 0);
  CHECK(golden(plan.weight(1, 0), 0.5));
  CHECK(plan.expert(2, 0) == 1);
  CHECK(golden(plan.weight(2, 0), 0.952574));
  CHECK(plan.expert(3, 0) == 1);
  CHECK(golden(plan.weight(3, 0), 0.731059));
  for (index t = 0; t < 4; ++t) CHECK(plan.expert(t, 1) == moe::no_expert);
  plan.build_expert_major();
  CHECK(plan.load(0) == 2);
  CHECK(plan.entries(0)[0].token == 0);
  CHECK(plan.entries(0)[1].token == 1);
  CHECK(plan.entries(1)[0].token == 2);
  CHECK(plan.entries(1)[1].token == 3);
}

TEST_CASE("expert_choice: variable experts per token, unchosen tokens, ties", "[routing][expert_choice]") {
  // E = 3, T = 3, c = 1: k_c = 1. Token 0 is every expert's favourite.
  moe::row_matrix<float> z(3, 3);
  z << 0, 0, 0,   // S = 1/3 each
      -5, -5, 5,  // S[:, 0] = S[:, 1] tiny
      -4, -4, -4;  // also uniform: ties with token 0 -> token 0 (lower index) wins
  const moe::expert_choice r(identity(3), {.capacity_factor = 1.0});
  const auto plan = route_logits(r, z);
  // Expert 0: S[:,0] = [1/3, ~4.5e-5, 1/3] -> token 0 (tie with token 2: lower index). Same for expert 1.
  // Expert 2: S[:,2] = [1/3, ~1, 1/3] -> token 1.
  CHECK(plan.active_slots(0) == 2);
  CHECK(plan.expert(0, 0) == 0);
  CHECK(plan.expert(0, 1) == 1);
  CHECK(golden(plan.weight(0, 1), 1.0 / 3));
  CHECK(plan.active_slots(1) == 1);
  CHECK(plan.expert(1, 0) == 2);
  CHECK(plan.active_slots(2) == 0);  // chosen by nobody: output 0
  const auto s = r.policy_stats(plan);
  CHECK(s.tokens_per_expert == 1);
  CHECK(s.tokens_not_chosen == 1);
  CHECK(s.max_experts_per_token == 2);
}

TEST_CASE("expert_choice equals the naive reference on random tokens", "[routing][expert_choice]") {
  moe_test::rng rng(801);
  for (const index E : {2, 8, 32}) {
    for (const double c : {0.5, 1.0, 2.0, 3.5}) {
      const index T = 61;
      const auto z = rng.matrix(T, E, 3.0f);
      const moe::expert_choice r(identity(E), {.capacity_factor = c,
                                               .small_batch = moe::expert_choice_fallback::route_nowhere});
      const index kc = r.tokens_per_expert(T);
      CHECK(kc == std::min<index>(static_cast<index>(std::floor(T * c / E + 1e-9)), T));
      const auto plan = route_logits(r, z);
      const auto want = naive_expert_choice(z, kc);
      INFO("E " << E << ", c " << c);
      index total = 0;
      for (index t = 0; t < T; ++t) {
        REQUIRE(plan.active_slots(t) == static_cast<index>(want[t].experts.size()));
        for (std::size_t s = 0; s < want[t].experts.size(); ++s) {
          REQUIRE(plan.expert(t, static_cast<index>(s)) == want[t].experts[s]);
          REQUIRE(plan.weight(t, static_cast<index>(s)) == Approx(want[t].weights[s]).epsilon(2e-6));
        }
        total += plan.active_slots(t);
      }
      CHECK(total == kc * E);  // balanced by construction
    }
  }
}

TEST_CASE("expert_choice: k_c rounding, clamping and -inf logits", "[routing][expert_choice]") {
  // The floor guard: 45 · 1.4 / 63 = 0.9999999999999999 gives k_c = 1, not 0.
  const moe::expert_choice guard(identity(63), {.capacity_factor = 1.4});
  CHECK(guard.tokens_per_expert(45) == 1);
  CHECK(guard.tokens_per_expert(44) == 0);
  // k_c > T clamps to T: every expert picks every token it can.
  const moe::expert_choice wide(identity(3), {.capacity_factor = 10.0});
  CHECK(wide.tokens_per_expert(4) == 4);
  moe::row_matrix<float> z(4, 3);
  z << 1, 2, 3, -inf, 0, 0, -inf, -inf, -inf, 0.5f, -inf, 1;
  const auto plan = route_logits(wide, z);
  CHECK(plan.active_slots(0) == 3);
  CHECK(plan.active_slots(1) == 2);  // never picked by expert 0 (-inf logit)
  CHECK(plan.expert(1, 0) == 1);
  CHECK(plan.active_slots(2) == 0);  // degenerate token: nobody picks it
  CHECK(plan.active_slots(3) == 2);
  CHECK(plan.expert(3, 0) == 0);
  CHECK(plan.expert(3, 1) == 2);
  // NaN: an error by default.
  z(0, 1) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(route_logits(wide, z), Catch::Contains("NaN router logit (token 0, expert 1)"));
}

TEST_CASE("expert_choice: decode-size calls are rejected unless a fallback is chosen", "[routing][expert_choice][error]") {
  moe::row_matrix<float> z(3, 8);  // T = 3 < E / c = 4: k_c = floor(3 · 2 / 8) = 0
  for (index t = 0; t < 3; ++t) {
    for (index e = 0; e < 8; ++e) z(t, e) = static_cast<float>((t + 1) * e % 5);
  }
  const moe::expert_choice strict(identity(8), {.capacity_factor = 2.0});
  CHECK(strict.tokens_per_expert(3) == 0);
  try {
    route_logits(strict, z);
    FAIL("expected moe::error");
  } catch (const moe::error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("parameter 'z.rows()' must be >= E/c = 4") != std::string::npos);
    CHECK(msg.find("got 3") != std::string::npos);
  }
  moe_test::rng rng(802);
  const moe::expert_choice strict_x(rng.matrix(8, 5), {.capacity_factor = 2.0});
  const auto x = rng.matrix(3, 5);
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  CHECK_THROWS_WITH(strict_x.route(moe::view(x), {}, plan, ws), Catch::Contains("parameter 'x.rows()'"));
  // k_c = 0 accepted: nobody is routed.
  const moe::expert_choice nowhere(identity(8), {.capacity_factor = 2.0,
                                                 .small_batch = moe::expert_choice_fallback::route_nowhere});
  const auto p0 = route_logits(nowhere, z);
  for (index t = 0; t < 3; ++t) CHECK(p0.active_slots(t) == 0);
  // Explicit token-choice fallback: softmax top-2 with the raw probabilities.
  const moe::expert_choice fallback(identity(8), {.capacity_factor = 2.0,
                                                  .small_batch = moe::expert_choice_fallback::token_choice,
                                                  .fallback_k = 2});
  const auto p1 = route_logits(fallback, z);
  for (index t = 0; t < 3; ++t) {
    const auto want = moe_test::naive_top_k(std::vector<float>(z.row(t).begin(), z.row(t).end()), 2, false, false);
    CHECK(p1.active_slots(t) == 2);
    for (index s = 0; s < 2; ++s) {
      CHECK(p1.expert(t, s) == want.experts[static_cast<std::size_t>(s)]);
      CHECK(p1.weight(t, s) == Approx(want.weights[static_cast<std::size_t>(s)]).epsilon(2e-6));
    }
  }
  // The fallback is used only when k_c = 0: a full batch still routes by expert choice.
  const moe::row_matrix<float> big = rng.matrix(16, 8);
  const auto a = route_logits(fallback, big), b = route_logits(strict, big);
  CHECK(std::equal(a.all_experts().begin(), a.all_experts().end(), b.all_experts().begin()));
  // Empty input is never an error.
  const moe::row_matrix<float> empty(0, 8);
  CHECK(route_logits(strict, empty).num_tokens() == 0);
}

TEST_CASE("expert_choice: bad configurations throw moe::error naming the parameter", "[routing][expert_choice][error]") {
  for (const double c : {0.0, -2.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    CHECK_THROWS_WITH(moe::expert_choice(identity(4), {.capacity_factor = c}), Catch::Contains("parameter 'capacity_factor'"));
  }
  CHECK_THROWS_WITH(moe::expert_choice(identity(4), {.fallback_k = 0}), Catch::Contains("parameter 'fallback_k'"));
  CHECK_THROWS_WITH(moe::expert_choice(identity(4), {.fallback_k = 5}), Catch::Contains("parameter 'fallback_k'"));
  const moe::row_matrix<float> z(2, 3);
  CHECK_THROWS_WITH(route_logits(moe::expert_choice(identity(4)), z),
                    Catch::Contains("parameter 'z.cols()' must be equal to 4, got 3"));
}

TEST_CASE("layer: expert choice equals the naive reference", "[routing][expert_choice][layer]") {
  moe_test::rng rng(803);
  const index E = 8, d = 24, f = 16, T = 33;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  moe::layer<moe::expert_choice, moe::swiglu_experts<float>, moe::device::cpu> layer(
      moe::expert_choice(router_w, {.capacity_factor = 2.0}), moe_test::make_bank(w), moe::device::cpu{2});
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  moe::row_matrix<float> z(T, E);
  for (index t = 0; t < T; ++t) {
    const auto zt = moe_test::naive_logits(router_w, x.data() + t * d);
    for (index e = 0; e < E; ++e) z(t, e) = zt[static_cast<std::size_t>(e)];
  }
  const auto routes = naive_expert_choice(z, layer.router().tokens_per_expert(T));
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  for (index t = 0; t < T; ++t) {
    for (std::size_t s = 0; s < routes[t].experts.size(); ++s) {
      w.accumulate(routes[t].experts[s], x.data() + t * d, routes[t].weights[s], want.data() + t * d);
    }
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  CHECK(layer.stats().assignments == 8 * 8);  // k_c = floor(33 · 2 / 8) = 8 per expert
  CHECK(layer.policy_stats().tokens_per_expert == 8);
}

}  // namespace
