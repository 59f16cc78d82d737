// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/gamma_mod.hpp: docs/routing-spec.md §13.3 auxiliary cross-entropy.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <moe/losses/gamma_mod.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
}  // namespace

TEST_CASE("gamma_mod_aux_loss: golden §13.3", "[gamma_mod][loss][golden]") {
  const std::vector<float> z = {0, 1, 1, 0, 0, 0.5f, 0, -1, 2, 0, 0, 0};
  const std::vector<float> target = {1, 0, 1, 0, 1, 1};  // I = [0, 2, 4, 5]; question tokens count as 1
  CHECK(golden(moe::gamma_mod_aux_loss(z, target), 0.705656));
  const double per_token[6] = {0.313262, 0.313262, 0.474077, 0.313262, 2.126928, 0.693147};
  for (std::size_t t = 0; t < 6; ++t) {
    CHECK(golden(moe::gamma_mod_aux_loss(std::span<const float>(z).subspan(2 * t, 2), std::span<const float>(target).subspan(t, 1)),
                 per_token[t]));
  }
  std::vector<float> grad(12);
  moe::gamma_mod_aux_loss(z, target, grad);
  CHECK(golden(grad[9], (0.119203 - 1) / 6));  // dL/dz1 = (p1 - y) / T
  CHECK(grad[8] == -grad[9]);
  CHECK(moe::gamma_mod_aux_loss(std::vector<float>{}, std::vector<float>{}) == 0.0);
  CHECK(moe::gamma_mod_aux_loss_coefficient == 0.01);
}

TEST_CASE("gamma_mod_aux_loss: gradient matches central differences", "[gamma_mod][loss][gradient]") {
  moe_test::rng rng(43);
  for (int rep = 0; rep < 5; ++rep) {
    const index T = rng.integer(1, 10);
    std::vector<double> z(static_cast<std::size_t>(2 * T)), target(static_cast<std::size_t>(T)), grad(z.size());
    for (auto& v : z) v = rng.uniform(-4.0f, 4.0f);
    for (auto& v : target) v = rng.integer(0, 1);
    moe::gamma_mod_aux_loss(z, target, grad);
    const auto num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::gamma_mod_aux_loss(p, target); }, z);
    CHECK(moe_test::max_relative_error(grad, num) < 1e-3);
  }
}

TEST_CASE("gamma_mod_aux_loss: errors name the parameter", "[gamma_mod][loss][error]") {
  const std::vector<float> z = {0, 1, 1, 0};
  CHECK_THROWS_WITH(moe::gamma_mod_aux_loss(z, std::vector<float>{1}), Catch::Contains("parameter 'logits.size()'"));
  CHECK_THROWS_WITH(moe::gamma_mod_aux_loss(z, std::vector<float>{1, -1}), Catch::Contains("parameter 'target[1]'"));
  std::vector<float> g(3);
  CHECK_THROWS_WITH(moe::gamma_mod_aux_loss(z, std::vector<float>{1, 0}, g), Catch::Contains("parameter 'grad.size()'"));
  CHECK_THROWS_WITH(moe::gamma_mod_aux_loss(std::vector<float>{0, 1, NAN, 0}, std::vector<float>{1, 0}),
                    Catch::Contains("parameter 'logits[2..3]'"));
}

}  // namespace
