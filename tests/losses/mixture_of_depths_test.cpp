// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/mixture_of_depths.hpp: docs/routing-spec.md §13.2 auxiliary BCE loss.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <moe/losses/mixture_of_depths.hpp>
#include <moe/routing/wrappers/layer_skip.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
}  // namespace

TEST_CASE("mod_aux_loss: golden §13.2 (r = [1,-1,1,0], I = [0,2])", "[mod][loss][golden]") {
  const std::vector<float> r = {1, -1, 1, 0};
  const std::vector<float> target = {1, 0, 1, 0};
  std::vector<float> grad(4);
  CHECK(golden(moe::mod_aux_loss(r, target, grad), 0.408233));
  // Per token: mean over one token each.
  const double per_token[4] = {0.313262, 0.313262, 0.313262, 0.693147};
  for (std::size_t t = 0; t < 4; ++t) {
    CHECK(golden(moe::mod_aux_loss(std::span<const float>(&r[t], 1), std::span<const float>(&target[t], 1)), per_token[t]));
  }
  // dL/dr = (sigmoid(r) - target) / T.
  CHECK(golden(grad[0], (0.731059 - 1) / 4));
  CHECK(golden(grad[1], 0.268941 / 4));
  CHECK(golden(grad[3], 0.5 / 4));
  // Targets from a plan.
  moe::routing_plan plan;
  plan.reset(4, 1, 1);
  plan.set_passes(1, 0);
  plan.set_passes(3, 0);
  std::vector<float> mask(4);
  moe::executed_mask(plan, std::span<float>(mask));
  CHECK(mask == target);
  CHECK(moe::mod_aux_loss(std::vector<float>{}, std::vector<float>{}) == 0.0);
}

TEST_CASE("mod_aux_loss: gradient matches central differences", "[mod][loss][gradient]") {
  moe_test::rng rng(11);
  for (int rep = 0; rep < 5; ++rep) {
    const index T = rng.integer(1, 12);
    std::vector<double> r(static_cast<std::size_t>(T)), target(static_cast<std::size_t>(T)), grad(static_cast<std::size_t>(T));
    for (auto& v : r) v = rng.uniform(-6.0f, 6.0f);
    for (auto& v : target) v = rng.integer(0, 1);
    if (rep == 4) target[0] = 0.3;  // soft target
    moe::mod_aux_loss(r, target, grad);
    const auto num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::mod_aux_loss(p, target); }, r);
    CHECK(moe_test::max_relative_error(grad, num) < 1e-3);
  }
}

TEST_CASE("mod_aux_loss: errors name the parameter", "[mod][loss][error]") {
  std::vector<float> r = {1, 2}, t = {1, 0}, g(3);
  CHECK_THROWS_WITH(moe::mod_aux_loss(r, std::vector<float>{1}), Catch::Contains("parameter 'target.size()'"));
  CHECK_THROWS_WITH(moe::mod_aux_loss(r, t, g), Catch::Contains("parameter 'grad.size()'"));
  CHECK_THROWS_WITH(moe::mod_aux_loss(r, std::vector<float>{1, 2}), Catch::Contains("parameter 'target[1]'"));
  r[0] = NAN;
  CHECK_THROWS_WITH(moe::mod_aux_loss(r, t), Catch::Contains("parameter 'r[0]'"));
}

}  // namespace
