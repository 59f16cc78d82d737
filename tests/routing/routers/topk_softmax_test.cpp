// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/topk_softmax.hpp against gpt-oss's router
// (transformers' GptOssTopKRouter.forward: `router_logits = F.linear(x, weight, bias)`;
// `top_value, top_index = torch.topk(router_logits, k)`; `softmax(top_value, dim=1)`), golden
// values computed by hand; the conformance suite; errors.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include <moe/moe.hpp>
#include <moe/routing/routers/topk_softmax.hpp>

#include "../../support/conformance.hpp"
#include "../../support/policies.hpp"

namespace {
using moe::index;

TEST_CASE("topk_softmax: gpt-oss routing, golden values", "[routing][topk_softmax]") {
  // x = identity rows, W = I, so the logits are the token states; bias [0, -1, 0.5, 0].
  const auto x = moe_test::fmatrix({{1, 3, 2, 0}, {0.5, 0.5, -1, 2}});
  const moe::topk_softmax r(moe_test::eye(4), {.k = 2, .logit_bias = {0.0f, -1.0f, 0.5f, 0.0f}});
  const auto plan = moe_test::route(r, x);
  // Token 0: biased logits [1, 2, 2.5, 0] -> experts 2, 1; softmax([2.5, 2]).
  moe_test::check_slots(plan, 0, {2, 1}, {0.6224593312018546, 0.3775406687981454});
  // Token 1: [0.5, -0.5, -0.5, 2] -> experts 3, 0; softmax([2, 0.5]).
  moe_test::check_slots(plan, 1, {3, 0}, {0.8175744761936437, 0.18242552380635635});
  // Ties go to the lower expert: [-0.5, -0.5] for the second slot would pick expert 1 first.
  const auto tie = moe_test::route(moe::topk_softmax(moe_test::eye(4), {.k = 3, .logit_bias = {0.0f, -1.0f, 0.5f, 0.0f}}), x);
  CHECK(tie.expert(1, 2) == 1);
  // route_logits adds the bias too: route_logits(W x) == route(x), bit for bit.
  const auto pl = moe_test::route_logits(r, x);
  for (index t = 0; t < 2; ++t) {
    for (index s = 0; s < 2; ++s) {
      CHECK(pl.expert(t, s) == plan.expert(t, s));
      CHECK(pl.weight(t, s) == plan.weight(t, s));
    }
  }
}

TEST_CASE("topk_softmax: infinities, conformance and errors", "[routing][topk_softmax][error]") {
  const float inf = std::numeric_limits<float>::infinity();
  const auto z = moe_test::fmatrix({{inf, 1, inf, 0}, {-inf, -inf, -inf, -inf}});
  const moe::topk_softmax r(moe_test::eye(4), {.k = 2});
  const auto plan = moe_test::route_logits(r, z);
  moe_test::check_slots(plan, 0, {0, 2}, {0.5, 0.5});  // +inf logits share the weight
  CHECK(plan.active_slots(1) == 0);                       // all -inf: nowhere
  moe_test::rng rng(7);
  moe_test::check_router_conformance(moe::topk_softmax(rng.matrix(12, 24), {.k = 4}));
  std::vector<float> bias(12);
  for (auto& b : bias) b = rng.uniform();
  moe_test::check_router_conformance(moe::topk_softmax(rng.matrix(12, 24), {.k = 3, .logit_bias = bias}));
  CHECK_THROWS_WITH(moe::topk_softmax(moe_test::eye(4), {.k = 5}), Catch::Contains("parameter 'k' must be in [1, 4], got 5"));
  CHECK_THROWS_WITH(moe::topk_softmax(moe_test::eye(4), {.k = 2, .logit_bias = {1, 2}}),
                    Catch::Contains("parameter 'logit_bias.size()' must be equal to 4, got 2"));
  auto nan = moe_test::fmatrix({{0, 1, 2, 3}});
  nan(0, 2) = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(moe_test::route_logits(r, nan), Catch::Contains("gives a NaN router logit (token 0, expert 2)"));
}

}  // namespace
