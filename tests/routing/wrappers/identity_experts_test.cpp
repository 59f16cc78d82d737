// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/identity_experts.hpp (LongCat-Flash's zero-computation
// experts: transformers' modeling_longcat_flash.py appends `zero_expert_num` nn.Identity()
// modules to the routed experts, so a selected identity expert contributes weight · x) and
// routing/wrappers/weigh_input.hpp (Llama 4: Llama4TextMoe multiplies the states by the router
// scores before the experts); golden values computed by hand, conformance, errors. The layer
// with each is tested over the devices in layer_policies_test.cpp.
#include <catch2/catch.hpp>

#include <moe/moe.hpp>

#include "../../support/conformance.hpp"
#include "../../support/policies.hpp"

namespace {
using moe::index;

TEST_CASE("identity_experts: chosen identity columns become the token's identity weight", "[routing][identity_experts]") {
  // W = I, so the logits are the states: softmax over [true 0, true 1, identity], top-2.
  const auto x = moe_test::fmatrix({{1, 0, 2}, {0, 3, -1}});
  const moe::identity_experts<moe::top_k<>> r(moe::top_k<>(moe_test::eye(3), {.k = 2}), 1);
  CHECK(r.num_experts() == 2);
  CHECK(r.identities() == 1);
  const auto plan = moe_test::route(r, x);
  CHECK(plan.num_experts() == 2);
  // Token 0: softmax([1, 0, 2]) = [0.2447, 0.0900, 0.6652]: the identity first, then expert 0.
  CHECK(plan.expert(0, 0) == moe::no_expert);
  CHECK(plan.expert(0, 1) == 0);
  CHECK(plan.weight(0, 1) == Approx(0.24472847105479764).epsilon(1e-6));
  CHECK(plan.identity_weight(0) == Approx(0.6652409557748218).epsilon(1e-6));
  // Token 1: softmax([0, 3, -1]): experts 1 and 0, no identity.
  moe_test::check_slots(plan, 1, {1, 0}, {0.9362395518765058, 0.0466126225779739});
  CHECK(plan.identity_weight(1) == 0.0f);
  CHECK(plan.has_identity());
  // route_logits gives the same plan.
  const auto pl = moe_test::route_logits(r, x);
  CHECK(pl.identity_weight(0) == plan.identity_weight(0));
  CHECK(pl.weight(0, 1) == plan.weight(0, 1));
  // m = 0 is the base router.
  const moe::identity_experts<moe::top_k<>> none(moe::top_k<>(moe_test::eye(3), {.k = 2}), 0);
  const auto p0 = moe_test::route(none, x);
  CHECK(p0.expert(0, 0) == 2);
  CHECK_FALSE(p0.has_identity());
  moe_test::rng rng(5);
  moe_test::check_router_conformance(moe::identity_experts<moe::top_k<>>(moe::top_k<>(rng.matrix(12, 16), {.k = 4}), 4));
  CHECK_THROWS_WITH((moe::identity_experts<moe::top_k<>>(moe::top_k<>(moe_test::eye(3), {.k = 2}), 3)),
                    Catch::Contains("parameter 'm' must be in [0, 2], got 3"));
}

TEST_CASE("weigh_input: the plan says the weights go on the expert input, the weights are the base's",
          "[routing][weigh_input]") {
  // Llama 4 with top-1: sigmoid of the largest logit.
  const auto x = moe_test::fmatrix({{2, -1, 0}, {0, 1, 3}});
  const moe::weigh_input<moe::top_k<moe::sigmoid_gate>> r(moe::top_k<moe::sigmoid_gate>(moe_test::eye(3), {.k = 1}));
  const auto plan = moe_test::route(r, x);
  CHECK(plan.input_weighted());
  moe_test::check_slots(plan, 0, {0}, {0.8807970779778823});
  moe_test::check_slots(plan, 1, {2}, {0.9525741268224334});
  CHECK(moe_test::route_logits(r, x).input_weighted());
  const auto base = moe_test::route(r.base(), x);
  CHECK_FALSE(base.input_weighted());
  moe_test::rng rng(6);
  moe_test::check_router_conformance(moe::weigh_input<moe::top_k<>>(moe::top_k<>(rng.matrix(8, 16), {.k = 2})));
}

}  // namespace
