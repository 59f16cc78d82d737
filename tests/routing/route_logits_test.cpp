// SPDX-License-Identifier: Apache-2.0
// route_logits() of every policy that has one: it takes the raw logits `W·x` and applies the
// policy's temperature exactly once, so it routes bit for bit as route(x); NaN errors name the
// parameter of the call ('z'), and the options of a policy built on moe::top_k are reported with
// the policy's own name.
#include <catch2/catch.hpp>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include <moe/kernels/gemm.hpp>
#include <moe/moe.hpp>

#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::route;
using moe_test::route_logits;

namespace {
// The logits `x · wᵀ [T × rows(w)]` by the canonical GEMM (batch invariant: the bits route() uses).
moe::row_matrix<float> logits(const moe::row_matrix<float>& w, const moe::row_matrix<float>& x) {
  const auto packed = moe::kernels::pack_panels(w.data(), w.rows(), w.cols(), w.cols(),
                                                moe::kernels::panel_width<moe::kernels::gemm_arch>);
  moe::row_matrix<float> z(x.rows(), w.rows());
  moe::workspace ws;
  ws.reset();
  moe::kernels::gemm(x.data(), x.rows(), x.cols(), packed, z.data(), w.rows(), ws);
  return z;
}

// Two plans are the same bit for bit: slots, weights, entropies and top scores.
void check_same(const moe::routing_plan& a, const moe::routing_plan& b) {
  REQUIRE(a.num_tokens() == b.num_tokens());
  REQUIRE(a.max_slots() == b.max_slots());
  CHECK(std::equal(a.all_experts().begin(), a.all_experts().end(), b.all_experts().begin()));
  CHECK(std::equal(a.all_weights().begin(), a.all_weights().end(), b.all_weights().begin()));
  CHECK(a.has_entropy() == b.has_entropy());
  CHECK(a.has_top_score() == b.has_top_score());
  for (index t = 0; t < a.num_tokens(); ++t) {
    if (a.has_entropy()) CHECK(a.entropy(t) == b.entropy(t));
    if (a.has_top_score()) CHECK(a.top_score(t) == b.top_score(t));
  }
}

template <class Router>
void check_route_logits(const Router& r, const moe::row_matrix<float>& w, const moe::row_matrix<float>& x) {
  check_same(route_logits(r, logits(w, x)), route(r, x));
}

// Expects moe::error whose message contains `entity: parameter 'param'` and not "moe::top_k".
template <class F>
void throws_from(F&& f, const std::string& entity, const std::string& param) {
  try {
    f();
    FAIL("expected moe::error from " << entity << " naming '" << param << "'");
  } catch (const moe::error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find(entity + ": parameter '" + param + "'") != std::string::npos);
    CHECK(msg.find("moe::top_k") == std::string::npos);
  }
}
}  // namespace

TEST_CASE("route_logits(W x) routes as route(x) bit for bit, temperature included", "[routing][route_logits]") {
  moe_test::rng rng(1401);
  const index E = 8, d = 24;
  const auto w = rng.matrix(E, d);
  for (const index T : {5, 40}) {  // below and above top_k's decode_rows
    INFO("T " << T);
    const auto x = rng.matrix(T, d);
    for (const float tau : {1.0f, 0.7f, 2.5f}) {
      INFO("temperature " << tau);
      check_route_logits(moe::top_k<>(w, {.k = 3, .renormalize = true, .temperature = tau}), w, x);
      check_route_logits(moe::top_k<moe::sigmoid_gate>(w, {.k = 2, .renormalize = true, .temperature = tau}), w, x);
      check_route_logits(moe::group_limited<>(w, {.k = 3, .n_groups = 4, .topk_groups = 2, .temperature = tau}), w, x);
      check_route_logits(moe::group_limited<>(w, {.k = 3, .n_groups = 4, .topk_groups = 2, .temperature = tau,
                                                  .selection_bias = std::vector<float>(E, 0.01f)}),
                         w, x);
      check_route_logits(moe::group_limited<moe::softmax_gate>(w, {.k = 2, .n_groups = 2, .topk_groups = 1,
                                                                   .score = moe::group_score::max,
                                                                   .temperature = tau}),
                         w, x);
      check_route_logits(moe::adaptive_k<>(w, {.k_min = 1, .k_max = 4, .temperature = tau}), w, x);
      check_route_logits(moe::top_p<>(w, {.p = 0.6f, .k_max = 4, .temperature = tau}), w, x);
      check_route_logits(moe::capacity<moe::top_k<>>(moe::top_k<>(w, {.k = 2, .temperature = tau}),
                                                     {.capacity_factor = 0.8}),
                         w, x);
      // Null experts: the base scores E + m columns, W = [W_true; W_null].
      const moe::row_matrix<float> w_true = w.topRows(6), w_null = w.bottomRows(2);
      check_route_logits(moe::null_experts<moe::top_k<>>(w_true, w_null, {.k = 3, .renormalize = true,
                                                                           .temperature = tau}),
                         w, x);
    }
    for (const float cap : {0.5f, 3.0f}) {  // the soft cap applies in route_logits too
      INFO("softcap " << cap);
      check_route_logits(moe::top_k<>(w, {.k = 3, .renormalize = true, .temperature = 0.7f, .softcap = cap}), w, x);
      check_route_logits(moe::top_k<moe::sigmoid_gate>(w, {.k = 2, .softcap = cap}), w, x);
    }
    check_route_logits(moe::topk_softmax(w, {.k = 3, .logit_bias = std::vector<float>(E, 0.25f)}), w, x);
    check_route_logits(moe::sparsemixer(w, {.k = 2}), w, x);
    check_route_logits(moe::expert_choice(w, {.capacity_factor = 2.0}), w, x);
    check_route_logits(moe::dynmole(w), w, x);
    check_route_logits(moe::blockffn(w), w, x);
  }
}

TEST_CASE("NaN in route_logits names 'z' (route names 'x'), with the policy's own name", "[routing][route_logits][nan]") {
  const auto w = moe_test::eye(4);
  auto z = moe_test::fmatrix({{1, 2, 3, 4}, {0, 0, 0, 0}});
  z(1, 2) = std::numeric_limits<float>::quiet_NaN();
  const auto names = [&](auto&& router, const std::string& entity, const std::string& option) {
    for (const bool logits_call : {true, false}) {
      try {
        if (logits_call) route_logits(router, z);
        else route(router, z);  // identity weight: x = z
        FAIL("expected moe::error from " << entity);
      } catch (const moe::error& e) {
        const std::string msg = e.what();
        INFO(msg);
        CHECK(e.id() == "moe.error.input");
        const std::string where = entity + (logits_call ? "::route_logits" : "::route");
        CHECK(msg.find(where + ": parameter '" + (logits_call ? "z" : "x") + "'") != std::string::npos);
        // Through the identity GEMM a NaN state makes every logit of the token NaN (0 · NaN).
        CHECK(msg.find(logits_call ? "token 1, expert 2" : "token 1, expert 0") != std::string::npos);
        CHECK(msg.find(option + "::nan") != std::string::npos);
      }
    }
  };
  names(moe::top_k<>(w, {.k = 2}), "moe::top_k", "top_k_options");
  names(moe::group_limited<>(w, {.k = 2, .n_groups = 2, .topk_groups = 1}), "moe::group_limited", "group_limited_options");
  names(moe::adaptive_k<>(w, {.k_min = 1, .k_max = 2}), "moe::adaptive_k", "adaptive_k_options");
  names(moe::top_p<>(w, {.k_max = 2}), "moe::top_p", "top_p_options");
  names(moe::expert_choice(w, {.capacity_factor = 2.0}), "moe::expert_choice", "expert_choice_options");
  names(moe::dynmole(w), "moe::dynmole", "dynmole_options");
  const moe::row_matrix<float> w_true = w.topRows(3), w_null = w.bottomRows(1);
  names(moe::null_experts<moe::top_k<>>(w_true, w_null, {.k = 2}), "moe::null_experts", "top_k_options");
  names(moe::topk_softmax(w, {.k = 2}), "moe::topk_softmax", "topk_softmax_options");
  names(moe::sparsemixer(w), "moe::sparsemixer", "sparsemixer_options");
}

TEST_CASE("options of policies built on top_k are reported with the policy's own name", "[routing][route_logits][error]") {
  const auto w = moe_test::eye(4);
  const moe::row_matrix<float> no_cols(4, 0);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // group_limited
  throws_from([&] { moe::group_limited<>(w, {.k = 2, .n_groups = 2, .topk_groups = 1, .temperature = 0.0f}); },
              "moe::group_limited", "temperature");
  throws_from([&] { moe::group_limited<>(w, {.k = 2, .n_groups = 2, .topk_groups = 1, .temperature = nan}); },
              "moe::group_limited", "temperature");
  throws_from([&] { moe::group_limited<>(w, {.k = 2, .n_groups = 2, .topk_groups = 1, .route_scale = inf}); },
              "moe::group_limited", "route_scale");
  throws_from([&] { moe::group_limited<>(no_cols, {.k = 2, .n_groups = 2, .topk_groups = 1}); }, "moe::group_limited",
              "weight.cols()");
  // adaptive_k
  throws_from([&] { moe::adaptive_k<>(w, {.k_min = 1, .k_max = 2, .temperature = -1.0f}); }, "moe::adaptive_k",
              "temperature");
  throws_from([&] { moe::adaptive_k<>(w, {.k_min = 1, .k_max = 2, .route_scale = nan}); }, "moe::adaptive_k",
              "route_scale");
  throws_from([&] { moe::adaptive_k<>(no_cols, {.k_min = 1, .k_max = 2}); }, "moe::adaptive_k", "weight.cols()");
  // top_p
  throws_from([&] { moe::top_p<>(w, {.k_max = 2, .temperature = inf}); }, "moe::top_p", "temperature");
  throws_from([&] { moe::top_p<>(w, {.k_max = 2, .route_scale = -inf}); }, "moe::top_p", "route_scale");
  throws_from([&] { moe::top_p<>(no_cols, {.k_max = 2}); }, "moe::top_p", "weight.cols()");
  // expert_choice
  throws_from([&] { (void)moe::expert_choice(no_cols); }, "moe::expert_choice", "weight.cols()");
}

}  // namespace
