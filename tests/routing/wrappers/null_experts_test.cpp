// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/null_experts.hpp (docs/routing-spec.md §7) and the stage protocol of
// routing/routers/token_choice.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/device/serial.hpp>
#include <moe/layer.hpp>
#include <moe/routing/wrappers/null_experts.hpp>
#include <moe/routing/routers/token_choice.hpp>

#include "../../support/layers.hpp"
#include "../../support/naive.hpp"
#include "../../support/naive_policies.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;
using moe_test::golden;
constexpr float inf = std::numeric_limits<float>::infinity();
using ada = moe::null_experts<moe::top_k<moe::softmax_gate>>;

// Identity router rows: with d = E + m and x = z, the logits are x itself.
moe::row_matrix<float> identity_rows(index first, index count, index d) {
  moe::row_matrix<float> w = moe::row_matrix<float>::Zero(count, d);
  for (index i = 0; i < count; ++i) w(i, first + i) = 1.0f;
  return w;
}

TEST_CASE("null_experts: golden example of spec §7", "[routing][null_experts][golden]") {
  const ada r(identity_rows(0, 2, 4), identity_rows(2, 2, 4), {.k = 2, .renormalize = true});
  CHECK(r.num_experts() == 2);
  CHECK(r.num_null_experts() == 2);
  CHECK(r.columns() == 4);
  CHECK(r.max_slots() == 2);
  const auto x = moe_test::fmatrix({{2, 1, 0, 0}, {1, -1, 0.5, 0}, {-1, 0, 1, 1}});
  const auto plan = moe_test::route(r, x);
  CHECK(plan.num_experts() == 2);
  check_slots(plan, 0, {0, 1}, {0.731059, 0.268941});
  check_slots(plan, 1, {0, moe::no_expert}, {1.0, 0.0});  // null 2 dropped from the route list
  check_slots(plan, 2, {moe::no_expert, moe::no_expert}, {0.0, 0.0});  // all-null
  CHECK(plan.active_slots(2) == 0);
  // The plan records the entropy of the full distribution over E + m columns.
  const double p0[4] = {0.610296, 0.224515, 0.082595, 0.082595};
  double h = 0;
  for (double p : p0) h -= p * std::log(p);
  CHECK(plan.entropy(0) == Approx(h).epsilon(1e-5));

  const auto s = r.policy_stats(plan);
  CHECK(s.tokens == 3);
  CHECK(s.slots == 2);
  CHECK(s.mean_true_experts == Approx(1.0));  // spec: mean k_eff = 1.0
  CHECK(s.flops_saved == Approx(0.5));
  CHECK(s.tokens_without_expert == 1);
}

TEST_CASE("null_experts: m = 0 is softmax top-k with renormalisation, bit for bit", "[routing][null_experts]") {
  moe_test::rng rng(701);
  const index E = 12, d = 24, T = 50;
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  const moe::row_matrix<float> no_rows(0, d);
  const ada r(w, no_rows, {.k = 3, .renormalize = true});
  const moe::top_k<> plain(w, {.k = 3, .renormalize = true});
  const auto a = moe_test::route(r, x);
  const auto b = moe_test::route(plain, x);
  REQUIRE(a.num_tokens() == b.num_tokens());
  CHECK(std::memcmp(a.all_experts().data(), b.all_experts().data(), sizeof(std::int32_t) * T * 3) == 0);
  CHECK(std::memcmp(a.all_weights().data(), b.all_weights().data(), sizeof(float) * T * 3) == 0);
  CHECK(r.policy_stats(a).flops_saved == 0.0);
}

TEST_CASE("null_experts: ties between a true and a null expert go to the true expert", "[routing][null_experts]") {
  // Mixtral recipe: W_null tiles the true gate, so null logit j equals true logit j mod E.
  moe_test::rng rng(702);
  const index E = 4, m = 8, d = 16, T = 30;
  const auto w = rng.matrix(E, d);
  moe::row_matrix<float> w_null(m, d);
  for (index j = 0; j < m; ++j) w_null.row(j) = w.row(j % E);
  const ada r(w, w_null, {.k = 3, .renormalize = true});
  const auto x = rng.matrix(T, d);
  const auto plan = moe_test::route(r, x);
  for (index t = 0; t < T; ++t) {
    // Sorted columns: the best true expert e, then its two null twins E + e and 2E + e.
    const auto z = moe_test::naive_logits(w, x.data() + t * d);
    const auto order = moe_test::brute_force_top_k(z, 1);
    CHECK(plan.expert(t, 0) == order[0]);
    CHECK(plan.weight(t, 0) == 1.0f);
    for (index s = 1; s < 3; ++s) CHECK(plan.expert(t, s) == moe::no_expert);
  }
  CHECK(r.policy_stats(plan).mean_true_experts == Approx(1.0));
}

TEST_CASE("null_experts equals the naive AdaMoE reference on random tokens", "[routing][null_experts]") {
  moe_test::rng rng(703);
  for (const index E : {1, 3, 16}) {
    for (const index m : {0, 1, 5, 16}) {
      for (const int k : {1, 2, 4}) {
        if (k > E + m) continue;
        const index d = 20, T = 64;
        const auto w = rng.matrix(E, d);
        auto w_null = rng.matrix(m, d);
        const auto x = rng.matrix(T, d);
        const ada r(w, w_null, {.k = k, .renormalize = true});
        const auto plan = moe_test::route(r, x);
        moe::row_matrix<float> all(E + m, d);
        all.topRows(E) = w;
        all.bottomRows(m) = w_null;
        for (index t = 0; t < T; ++t) {
          const auto z = moe_test::naive_logits(all, x.data() + t * d);
          const auto want = moe_test::naive_null_route(z, E, k);
          INFO("E " << E << " m " << m << " k " << k << " t " << t);
          for (index s = 0; s < k; ++s) {
            REQUIRE(plan.expert(t, s) == want.experts[static_cast<std::size_t>(s)]);
            REQUIRE(plan.weight(t, s) == Approx(want.weights[static_cast<std::size_t>(s)]).margin(1e-6).epsilon(2e-6));
          }
        }
      }
    }
  }
}

TEST_CASE("null_experts: ±inf logits, NaN and the sigmoid gate", "[routing][null_experts][inf]") {
  const auto w_true = identity_rows(0, 2, 4);
  const auto w_null = identity_rows(2, 2, 4);
  const ada r(w_true, w_null, {.k = 3, .renormalize = true});
  const auto x = moe_test::fmatrix({{1, 0, -inf, -inf},       // only 2 finite columns: k_t = 2 < k
                                    {-inf, -inf, -inf, -inf},  // degenerate: routes nowhere
                                    {-inf, 0, inf, 3}});       // +inf null takes all the mass
  const auto plan = moe_test::route_logits(r, x);
  check_slots(plan, 0, {0, 1, moe::no_expert}, {1 / (1 + std::exp(-1.0)), 1 / (1 + std::exp(1.0)), 0});
  CHECK(plan.active_slots(1) == 0);
  // Row 2: selection [2 (+inf), 3, 1]: the only true expert has p = 0, so D = 0 -> weight 0.
  check_slots(plan, 2, {moe::no_expert, moe::no_expert, 1}, {0, 0, 0});

  auto nan_x = x;
  nan_x(0, 3) = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe_test::route_logits(r, nan_x); }, "z");
  const ada sanitised(w_true, w_null, {.k = 3, .renormalize = true, .nan = moe::nan_policy::to_neg_inf});
  CHECK(moe_test::route_logits(sanitised, nan_x).active_slots(0) == 2);

  // Sigmoid scores over E + m; the weights are renormalised over the selected true experts.
  const moe::null_experts<moe::top_k<moe::sigmoid_gate>> sig(w_true, w_null, {.k = 2, .renormalize = true});
  const auto ps = moe_test::route(sig, moe_test::fmatrix({{1, -1, 0.5, 0}, {0.2, 0.3, 0, 0}}));
  check_slots(ps, 0, {0, moe::no_expert}, {1.0, 0});
  const double s0 = 1 / (1 + std::exp(-0.2)), s1 = 1 / (1 + std::exp(-0.3));
  check_slots(ps, 1, {1, 0}, {s1 / (s0 + s1), s0 / (s0 + s1)});
}

TEST_CASE("null_experts: a true expert whose weight is 0 computes nothing", "[routing][null_experts][layer]") {
  // docs/routing-spec.md §1.2: when every selected true expert underflows (p < FLT_MIN is 0), the
  // renormalisation denominator is 0 and the selected true expert gets weight 0. It keeps its id
  // in the plan (the router's choice) but has no expert-major entry: the device computes nothing
  // for it. Expert weights large enough that the expert's output overflows show it: 0 · inf would
  // be NaN.
  const index d = 4, f = 3;
  const ada r(identity_rows(0, 2, d), identity_rows(2, 2, d), {.k = 3, .renormalize = true});
  moe_test::rng rng(5);
  auto w = moe_test::random_swiglu(rng, 2, d, f);
  w.gate *= 1e18f;
  w.up *= 1e18f;
  w.down *= 1e18f;
  moe::layer<ada, moe::swiglu_experts<float>, moe::device::serial> l(r, moe_test::make_bank(w));
  // Token 0: selection [2 (null), 3 (null), 1]: p_1 = exp(-200) = 0, so D = 0. Token 1: a true
  // expert with weight 1 whose output overflows: the overflow is real, not hidden.
  const auto x = moe_test::fmatrix({{-200, 0, 200, 3}, {1, -200, -200, -200}});
  moe::row_matrix<float> y(2, d);
  l.forward(x, y);
  const auto& plan = l.plan();
  CHECK(plan.expert(0, 2) == 1);
  CHECK(plan.weight(0, 2) == 0.0f);
  CHECK(plan.load(1) == 0);  // no row computed for token 0
  CHECK(plan.load(0) == 1);  // token 1
  REQUIRE(plan.entries(0).size() == 1);
  CHECK(plan.entries(0)[0].token == 1);
  CHECK(plan.entries(0)[0].weight == 1.0f);
  CHECK(plan.total_assignments() == 1);
  CHECK(y.row(0).isZero(0.0f));
  CHECK_FALSE(y.row(1).allFinite());
}

TEST_CASE("null_experts: without renormalisation the true experts keep their probability", "[routing][null_experts]") {
  const ada r(identity_rows(0, 2, 4), identity_rows(2, 2, 4), {.k = 2, .route_scale = 2.0f});
  const auto plan = moe_test::route(r, moe_test::fmatrix({{1, -1, 0.5, 0}}));
  check_slots(plan, 0, {0, moe::no_expert}, {2 * 0.473991, 0});
}

TEST_CASE("null_experts: bad configurations throw moe::error naming the parameter", "[routing][null_experts][error]") {
  moe_test::rng rng(704);
  const auto w = rng.matrix(2, 4);
  const auto w_null = rng.matrix(2, 4);
  moe_test::throws_naming([&] { ada(w, w_null, {.k = 5}); }, "k");  // k > E + m
  moe_test::throws_naming([&] { ada(w, w_null, {.k = 0}); }, "k");
  moe_test::throws_naming([&] { ada(w, rng.matrix(2, 5), {.k = 2}); }, "w_null.cols()");
  moe_test::throws_naming([&] { ada(moe::top_k<>(w, {.k = 1}), 2); }, "m");   // no true expert left
  moe_test::throws_naming([&] { ada(moe::top_k<>(w, {.k = 1}), -1); }, "m");
  const ada r(w, w_null, {.k = 2});
  moe_test::throws_naming([&] { moe_test::route(r, rng.matrix(3, 5)); }, "x.cols()");
  const auto empty = moe_test::route(r, moe::row_matrix<float>(0, 4));
  CHECK(empty.num_tokens() == 0);
  CHECK(r.policy_stats(empty).mean_true_experts == 0.0);
  CHECK(r.policy_stats(empty).flops_saved == 0.0);
}

}  // namespace
