// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/top_k.hpp and gates.hpp: docs/routing-spec.md §1.2, §2, §3.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

#include <moe/routing/routers/top_k.hpp>

#include "../../support/conformance.hpp"
#include "../../support/naive.hpp"
#include "../../support/random.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe_test::route_logits;
using moe_test::route;
constexpr float inf = std::numeric_limits<float>::infinity();

namespace {
moe::row_matrix<float> common_w() {
  moe::row_matrix<float> w(4, 2);
  w << 1, 0, 0, 1, -1, 0.5f, 0.5f, 0.5f;
  return w;
}
moe::row_matrix<float> common_x() {
  moe::row_matrix<float> x(3, 2);
  x << 1, 0, 0, 1, 1, 1;
  return x;
}

void check_route(const moe::routing_plan& plan, index t, std::vector<int> experts, std::vector<double> weights) {
  INFO("token " << t);
  for (std::size_t s = 0; s < experts.size(); ++s) {
    CHECK(plan.expert(t, static_cast<index>(s)) == experts[s]);
    CHECK(golden(plan.weight(t, static_cast<index>(s)), weights[s]));
  }
}
}  // namespace

TEST_CASE("top_k softmax: golden example of spec §2.5, renormalised", "[routing][top_k][golden]") {
  const moe::top_k<moe::softmax_gate> r(common_w(), {.k = 2, .renormalize = true});
  const auto plan = route(r, common_x());
  check_route(plan, 0, {0, 3}, {0.622459, 0.377541});
  check_route(plan, 1, {1, 2}, {0.622459, 0.377541});  // tie 2 vs 3: lower index
  check_route(plan, 2, {0, 1}, {0.5, 0.5});            // three-way tie 0, 1, 3
}

TEST_CASE("top_k softmax: golden example of spec §2.5, raw probabilities", "[routing][top_k][golden]") {
  const moe::top_k<moe::softmax_gate> r(common_w(), {.k = 2});
  const auto plan = route(r, common_x());
  check_route(plan, 0, {0, 3}, {0.473991, 0.287490});
  check_route(plan, 1, {1, 2}, {0.387456, 0.235004});
  check_route(plan, 2, {0, 1}, {0.310257, 0.310257});
  // Entropy of p_0 = [0.473991, 0.174371, 0.064148, 0.287490].
  const double p0[4] = {0.473991, 0.174371, 0.064148, 0.287490};
  double h = 0;
  for (double p : p0) h -= p * std::log(p);
  CHECK(plan.has_entropy());
  CHECK(plan.entropy(0) == Approx(h).epsilon(1e-5));
}

TEST_CASE("top_k sigmoid: golden example of spec §3", "[routing][top_k][golden]") {
  const moe::top_k<moe::sigmoid_gate> norm(common_w(), {.k = 2, .renormalize = true});
  const auto plan = route(norm, common_x());
  check_route(plan, 0, {0, 3}, {0.540117, 0.459883});
  check_route(plan, 1, {1, 2}, {0.540117, 0.459883});
  check_route(plan, 2, {0, 1}, {0.5, 0.5});
  const moe::top_k<moe::sigmoid_gate> raw(common_w(), {.k = 2});
  const auto plan_raw = route(raw, common_x());
  check_route(plan_raw, 0, {0, 3}, {0.731059, 0.622459});
}

TEST_CASE("top_k: route_scale multiplies the weights after renormalisation", "[routing][top_k]") {
  const moe::top_k<moe::sigmoid_gate> r(common_w(), {.k = 2, .renormalize = true, .route_scale = 2.5f});
  const auto plan = route(r, common_x());
  check_route(plan, 0, {0, 3}, {2.5 * 0.540117, 2.5 * 0.459883});
}

TEST_CASE("top_k: temperature divides the logits", "[routing][top_k]") {
  const moe::top_k<moe::softmax_gate> r(common_w(), {.k = 1, .temperature = 2.0f});
  const auto plan = route(r, common_x());
  // z_0 / 2 = [0.5, 0, -0.5, 0.25]
  double s = std::exp(0.5) + 1 + std::exp(-0.5) + std::exp(0.25);
  check_route(plan, 0, {0}, {std::exp(0.5) / s});
}

TEST_CASE("top_k: the selection bias picks experts, the unbiased scores weigh them", "[routing][top_k]") {
  // Sigmoid scores of token 0: [0.731059, 0.5, 0.268941, 0.622459]; bias lifts expert 2.
  const moe::top_k<moe::sigmoid_gate> r(common_w(),
                                        {.k = 2, .renormalize = true, .selection_bias = {0, 0, 0.5f, 0}});
  const auto plan = route(r, common_x());
  // keys: [0.731, 0.5, 0.769, 0.622] -> [2, 0]; weights from s: 0.268941, 0.731059 renormalised.
  check_route(plan, 0, {2, 0}, {0.268941 / 1.0, 0.731059 / 1.0});
  // Negative biases must not let a -inf logit in, and ties in biased keys go to the lower index.
  moe::row_matrix<float> w(3, 1);
  w << 1, 1, -1;
  const moe::top_k<moe::sigmoid_gate> r2(w, {.k = 3, .selection_bias = {-1, -1, 0}});
  moe::row_matrix<float> x(1, 1);
  x << inf;  // logits [inf, inf, -inf]: a one-column router passes ±inf through the GEMM
  const auto p2 = route(r2, x);
  CHECK(p2.expert(0, 0) == 0);
  CHECK(p2.expert(0, 1) == 1);
  CHECK(p2.expert(0, 2) == moe::no_expert);
}

TEST_CASE("top_k: ±inf logits (spec §1.2)", "[routing][top_k][inf]") {
  moe::row_matrix<float> w(4, 4);
  w.setIdentity();
  moe::row_matrix<float> x(4, 4);  // logits given directly (0 · inf would be NaN in a GEMM)
  x << inf, 1, inf, 0,        // two +inf share the softmax mass
      -inf, -inf, -inf, -inf, // degenerate: routes nowhere
      -inf, 2, -inf, -inf,    // one finite logit: k_t = 1 < k
      -200, -inf, -300, -inf; // finite logits whose sigmoid underflows to 0 stay selectable
  const moe::top_k<moe::softmax_gate> soft(w, {.k = 2, .renormalize = true});
  const auto p = route_logits(soft, x);
  check_route(p, 0, {0, 2}, {0.5, 0.5});
  CHECK(p.active_slots(1) == 0);
  CHECK(p.expert(1, 0) == moe::no_expert);
  CHECK(p.weight(1, 0) == 0.0f);
  CHECK(p.active_slots(2) == 1);
  check_route(p, 2, {1}, {1.0});
  CHECK(p.expert(2, 1) == moe::no_expert);

  const moe::top_k<moe::sigmoid_gate> sig(w, {.k = 2, .renormalize = true});
  const auto q = route_logits(sig, x);
  check_route(q, 0, {0, 2}, {0.5, 0.5});
  CHECK(q.active_slots(1) == 0);
  // Zero-denominator rule: both selected sigmoid scores are 0 -> weights 0, never NaN.
  CHECK(q.expert(3, 0) == 0);
  CHECK(q.expert(3, 1) == 2);
  CHECK(q.weight(3, 0) == 0.0f);
  CHECK(q.weight(3, 1) == 0.0f);
}

TEST_CASE("top_k: NaN logits are an error by default and -inf on request", "[routing][top_k][nan][error]") {
  moe::row_matrix<float> w(3, 3);
  w.setIdentity();
  moe::row_matrix<float> x(2, 3);
  x << 1, 2, 3, 0.5f, std::numeric_limits<float>::quiet_NaN(), 0.25f;
  const moe::top_k<moe::softmax_gate> checked(w, {.k = 2});
  try {
    route_logits(checked, x);
    FAIL("expected moe::error");
  } catch (const moe::error& e) {
    const std::string msg = e.what();
    CHECK(e.id() == "moe.error.input");
    CHECK(msg.find("moe::top_k::route_logits: parameter 'z'") != std::string::npos);
    CHECK(msg.find("token 1, expert 1") != std::string::npos);
  }
  const moe::top_k<moe::softmax_gate> sanitised(w, {.k = 2, .renormalize = true, .nan = moe::nan_policy::to_neg_inf});
  const auto plan = route_logits(sanitised, x);
  CHECK(plan.expert(1, 0) == 0);
  CHECK(plan.expert(1, 1) == 2);
  const double a = std::exp(0.5), b = std::exp(0.25);
  CHECK(golden(plan.weight(1, 0), a / (a + b)));
}

TEST_CASE("top_k: every bad configuration throws moe::error naming the parameter", "[routing][top_k][error]") {
  const auto w = common_w();
  auto throws_naming = [&](moe::top_k_options o, const std::string& param) {
    try {
      moe::top_k<moe::softmax_gate> r(w, std::move(o));
      FAIL("expected moe::error for " << param);
    } catch (const moe::error& e) {
      CHECK(std::string(e.what()).find("parameter '" + param + "'") != std::string::npos);
    }
  };
  throws_naming({.k = 0}, "k");
  throws_naming({.k = 5}, "k");
  throws_naming({.k = 2, .route_scale = inf}, "route_scale");
  throws_naming({.k = 2, .temperature = 0.0f}, "temperature");
  throws_naming({.k = 2, .selection_bias = {1, 2, 3}}, "selection_bias.size()");
  throws_naming({.k = 2, .selection_bias = {1, 2, 3, std::numeric_limits<float>::quiet_NaN()}}, "selection_bias[e]");
  const moe::top_k<moe::softmax_gate> r(w, {.k = 2});
  moe::row_matrix<float> x(2, 3);
  x.setZero();
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  CHECK_THROWS_WITH(r.route(moe::view(std::as_const(x)), {}, plan, ws),
                    Catch::Contains("parameter 'x.cols()' must be equal to 2, got 3"));
  moe::row_matrix<float> z(2, 3);
  z.setZero();
  CHECK_THROWS_WITH(r.route_logits(moe::view(std::as_const(z)), plan, ws),
                    Catch::Contains("parameter 'z.cols()' must be equal to 4, got 3"));
}

TEST_CASE("top_k: empty batch gives an empty plan", "[routing][top_k]") {
  const moe::top_k<moe::softmax_gate> r(common_w(), {.k = 2});
  moe::row_matrix<float> x(0, 2);
  const auto plan = route(r, x);
  CHECK(plan.num_tokens() == 0);
  CHECK(plan.max_slots() == 2);
}

TEMPLATE_TEST_CASE("top_k equals the naive reference on random tokens", "[routing][top_k]", moe::softmax_gate,
                   moe::sigmoid_gate) {
  moe_test::rng rng(99);
  constexpr bool is_sigmoid = std::is_same_v<TestType, moe::sigmoid_gate>;
  for (const index E : {1, 7, 64, 100}) {
    for (const int k : {1, 2, 6}) {
      if (k > E) continue;
      const index d = 33, T = 120;
      auto w = rng.matrix(E, d);
      auto x = rng.matrix(T, d);
      for (const bool renorm : {false, true}) {
        const moe::top_k<TestType> r(w, {.k = k, .renormalize = renorm, .route_scale = 1.5f});
        const auto plan = route(r, x);
        for (index t = 0; t < T; ++t) {
          const auto z = moe_test::naive_logits(w, x.data() + t * d);
          const auto want = moe_test::naive_top_k(z, k, is_sigmoid, renorm, 1.5);
          for (index s = 0; s < k; ++s) {
            REQUIRE(plan.expert(t, s) == want.experts[static_cast<std::size_t>(s)]);
            REQUIRE(plan.weight(t, s) == Approx(want.weights[static_cast<std::size_t>(s)]).epsilon(2e-6));
          }
        }
      }
    }
  }
}

TEST_CASE("top_k: k = E routes to every selectable expert, best first", "[routing][top_k]") {
  moe::row_matrix<float> w(5, 5);
  w.setIdentity();
  moe::row_matrix<float> z(3, 5);
  z << 0.5f, 2, -1, 2, 0,  // ties 1 and 3: lower index first
      0, 0, 0, 0, 0,       // all tied: index order
      1, -inf, 3, -inf, 2;  // -inf never selected, even with k = E
  const moe::top_k<> r(w, {.k = 5, .renormalize = true});
  const auto plan = route_logits(r, z);
  moe_test::check_slots(plan, 0, {1, 3, 0, 4, 2}, {});
  moe_test::check_slots(plan, 1, {0, 1, 2, 3, 4}, {0.2, 0.2, 0.2, 0.2, 0.2});
  CHECK(plan.active_slots(2) == 3);
  moe_test::check_slots(plan, 2, {2, 4, 0, moe::no_expert, moe::no_expert}, {});
  for (index t = 0; t < 3; ++t) {
    const auto want = moe_test::naive_top_k(std::vector<float>(z.row(t).begin(), z.row(t).end()), 5, false, true);
    for (std::size_t s = 0; s < want.experts.size(); ++s) {
      CHECK(plan.expert(t, static_cast<index>(s)) == want.experts[s]);
      CHECK(plan.weight(t, static_cast<index>(s)) == Approx(want.weights[s]).epsilon(1e-6));
    }
    float total = 0;
    for (float v : plan.weights(t)) total += v;
    CHECK(total == Approx(1.0f).epsilon(1e-6));
  }
}

TEST_CASE("top_k: 1, 2 or 3 threads give the same plan, a NaN reports the lowest token", "[routing][top_k][threads]") {
  moe_test::rng rng(210);
  const index E = 16, d = 32;
  const auto w = rng.matrix(E, d);
  const moe::top_k<> r(w, {.k = 4, .renormalize = true, .route_scale = 1.5f, .temperature = 0.8f});
  const auto with_threads = [&](const moe::row_matrix<float>& x, int threads) {
    moe::routing_plan plan;
    moe::workspace ws;
    ws.reset();
    r.route(moe::view(x), {.threads = threads}, plan, ws);
    return plan;
  };
  for (const index T : {1, 3, 8, 9, 20, 61}) {  // T <= decode_rows splits the panels, T > 8 the tokens
    INFO("T " << T);
    const auto x = rng.matrix(T, d);
    const auto one = with_threads(x, 1);
    for (const int threads : {2, 3}) {
      INFO("threads " << threads);
      const auto many = with_threads(x, threads);
      CHECK(std::equal(one.all_experts().begin(), one.all_experts().end(), many.all_experts().begin()));
      CHECK(std::equal(one.all_weights().begin(), one.all_weights().end(), many.all_weights().begin()));
      for (index t = 0; t < T; ++t) {
        CHECK(one.entropy(t) == many.entropy(t));
        CHECK(one.top_score(t) == many.top_score(t));
      }
    }
  }
  // NaN tokens in the shares of threads 1 and 2 (3 threads: T = 20 -> rows [0,6) [6,13) [13,20);
  // T = 8 -> [0,2) [2,5) [5,8)): the error names the lowest, whichever thread found it.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const auto& [T, first, second] : {std::tuple<index, index, index>{20, 8, 15}, {8, 3, 6}, {20, 14, 16}}) {
    auto x = rng.matrix(T, d);
    x(second, 0) = nan;
    x(first, 5) = nan;
    for (const int threads : {1, 2, 3}) {
      INFO("T " << T << ", threads " << threads);
      try {
        with_threads(x, threads);
        FAIL("expected moe::error");
      } catch (const moe::error& e) {
        const std::string msg = e.what();
        INFO(msg);
        CHECK(msg.find("(token " + std::to_string(first) + ", expert 0)") != std::string::npos);
      }
    }
  }
}

TEST_CASE("top_k: soft-capped logits (softcap), golden values", "[routing][top_k][softcap]") {
  // z <- c · tanh(z / c), c = 2, before the gate (Laguna's LagunaTopKRouter with
  // moe_router_logit_softcapping: `tanh(logits / sc) * sc`); worked out by hand.
  const auto z = moe_test::fmatrix({{1, 3, 2, -inf}, {inf, 50, 0, 0}});
  const moe::top_k<moe::softmax_gate> soft(moe_test::eye(4), {.k = 2, .softcap = 2.0f});
  const auto p = route_logits(soft, z);
  // Capped [0.924234, 1.810297, 1.523188, -inf]: softmax [0.190630, 0.462384, 0.346987, 0].
  check_route(p, 0, {1, 2}, {0.46238358020955195, 0.34698675577464305});
  // +inf becomes 2 and 50 saturates to 2 in fp32: a tie, to the lower expert; -inf stays -inf.
  CHECK(p.expert(1, 0) == 0);
  CHECK(p.expert(1, 1) == 1);
  CHECK(p.weight(1, 0) == p.weight(1, 1));
  const moe::top_k<moe::sigmoid_gate> sig(moe_test::eye(4), {.k = 3, .softcap = 2.0f});
  const auto q = route_logits(sig, z);
  check_route(q, 0, {1, 2, 0}, {0.8593977060349818, 0.8210074960059999, 0.7159040902975481});
  CHECK(q.active_slots(0) == 3);  // the -inf logit is not selected
  // The temperature divides first: z = 4, tau = 2, c = 1 -> tanh(2) = 0.964028, sigmoid of it.
  const moe::row_matrix<float> one = moe::row_matrix<float>::Constant(1, 1, 4.0f);
  const moe::row_matrix<float> w1 = moe::row_matrix<float>::Ones(1, 1);
  const auto t = route_logits(moe::top_k<moe::sigmoid_gate>(w1, {.k = 1, .temperature = 2.0f, .softcap = 1.0f}), one);
  CHECK(golden(t.weight(0, 0), 1.0 / (1.0 + std::exp(-0.9640275800758169))));
  // A cap so large that tanh is the identity to fp32 changes nothing in the choice of experts.
  moe_test::rng rng(2801);
  const auto w = rng.matrix(10, 12);
  const auto x = rng.matrix(20, 12);
  const auto a = route(moe::top_k<>(w, {.k = 3}), x), b = route(moe::top_k<>(w, {.k = 3, .softcap = 1e6f}), x);
  CHECK(std::equal(a.all_experts().begin(), a.all_experts().end(), b.all_experts().begin()));
  moe_test::check_router_conformance(moe::top_k<>(w, {.k = 3, .renormalize = true, .softcap = 1.5f}));
  moe_test::check_router_conformance(moe::top_k<moe::sigmoid_gate>(w, {.k = 2, .selection_bias = std::vector<float>(10, 0.1f),
                                                                      .softcap = 0.5f}));
  const auto bad = [&](float c) {
    try {
      moe::top_k<> r(w, {.k = 2, .softcap = c});
      FAIL("expected moe::error for softcap " << c);
    } catch (const moe::error& e) {
      CHECK(std::string(e.what()).find("moe::top_k: parameter 'softcap' must be finite and >= 0 (0: no cap)") !=
            std::string::npos);
    }
  };
  bad(-1.0f);
  bad(inf);
  bad(std::numeric_limits<float>::quiet_NaN());
}

}  // namespace
