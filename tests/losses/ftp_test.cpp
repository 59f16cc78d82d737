// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/ftp.hpp: docs/routing-spec.md §13.4 sparsity, guide and distillation losses.
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include <moe/losses/ftp.hpp>
#include <moe/routing/depth/ftp.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
const std::vector<float> golden_pi = {0.9f, 0.2f, 0.6f, 0.4f, 0.8f};
}  // namespace

TEST_CASE("ftp losses: golden §13.4 (s^ = 0.42, L_s, guide BCE)", "[ftp][loss][golden]") {
  CHECK(golden(moe::ftp_sparsity_loss(golden_pi, std::vector<float>{0.4f}), 0.0));
  CHECK(golden(moe::ftp_sparsity_loss(golden_pi, std::vector<float>{0.5f}), 0.08));
  // Two layers: the sum over layers.
  std::vector<float> two = golden_pi;
  two.insert(two.end(), golden_pi.begin(), golden_pi.end());
  std::vector<float> grad(10);
  CHECK(golden(moe::ftp_sparsity_loss(two, std::vector<float>{0.5f, 0.4f}, grad), 0.08));
  for (int t = 0; t < 5; ++t) {
    CHECK(golden(grad[t], 0.2));     // active hinge: 1/T
    CHECK(grad[5 + t] == 0.0f);      // inactive
  }
  // Guide loss against the static router of s = 0.4: mask [1, 0, 0, 1, 1].
  std::vector<float> mask(5);
  moe::ftp_static_mask(5, 0.4, std::span<float>(mask));
  const double per_token[5] = {0.105361, 0.223144, 0.916291, 0.916291, 0.223144};
  for (std::size_t t = 0; t < 5; ++t) {
    CHECK(golden(moe::ftp_guide_loss(std::span<const float>(golden_pi).subspan(t, 1), std::span<const float>(mask).subspan(t, 1)),
                 per_token[t]));
  }
  CHECK(golden(moe::ftp_guide_loss(golden_pi, mask), 0.476846));
  // pi = 0 or 1 against the wrong target: clamped logs (torch BCELoss), finite.
  CHECK(moe::ftp_guide_loss(std::vector<float>{0.0f, 1.0f}, std::vector<float>{1.0f, 0.0f}) == 100.0);
  // Empty inputs.
  CHECK(moe::ftp_sparsity_loss(std::vector<float>{}, std::vector<float>{0.5f}) == 0.0);
  CHECK(moe::ftp_sparsity_loss(std::vector<float>{}, std::vector<float>{}) == 0.0);
  CHECK(moe::ftp_guide_loss(std::vector<float>{}, std::vector<float>{}) == 0.0);
  CHECK(moe::ftp_distillation_loss(std::vector<float>{}, std::vector<float>{}) == 0.0);
  CHECK(golden(moe::ftp_distillation_loss(std::vector<float>{1, 2, 3}, std::vector<float>{1, 0, 4}), 5.0 / 3));
}

TEST_CASE("ftp losses: gradients match central differences", "[ftp][loss][gradient]") {
  moe_test::rng rng(63);
  for (int rep = 0; rep < 5; ++rep) {
    const index layers = rng.integer(1, 4), T = rng.integer(1, 9);
    std::vector<double> pi(static_cast<std::size_t>(layers * T)), grad(pi.size()), target(static_cast<std::size_t>(layers));
    for (auto& v : pi) v = rng.uniform(0.05f, 0.95f);
    for (index l = 0; l < layers; ++l) {
      double achieved = 0;
      for (index t = 0; t < T; ++t) achieved += (1 - pi[l * T + t]) / T;
      // Away from the kink: half the layers under-prune by 0.1, half over-prune.
      target[l] = std::clamp(achieved + ((l + rep) % 2 ? 0.1 : -0.1), 0.0, 1.0);
    }
    moe::ftp_sparsity_loss(pi, target, grad);
    auto num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::ftp_sparsity_loss(p, target); }, pi);
    CHECK(moe_test::max_relative_error(grad, num) < 1e-3);

    std::vector<double> mask(static_cast<std::size_t>(T)), p1(mask.size()), g1(mask.size());
    for (auto& v : mask) v = rng.integer(0, 1);
    for (auto& v : p1) v = rng.uniform(0.05f, 0.95f);
    moe::ftp_guide_loss(p1, mask, g1);
    num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::ftp_guide_loss(p, mask); }, p1);
    CHECK(moe_test::max_relative_error(g1, num) < 1e-3);

    std::vector<double> pruned(static_cast<std::size_t>(3 * T)), dense(pruned.size()), g2(pruned.size());
    for (auto& v : pruned) v = rng.uniform();
    for (auto& v : dense) v = rng.uniform();
    moe::ftp_distillation_loss(pruned, dense, g2);
    num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::ftp_distillation_loss(p, dense); }, pruned);
    CHECK(moe_test::max_relative_error(g2, num) < 1e-3);
  }
}

TEST_CASE("ftp losses: errors name the parameter", "[ftp][loss][error]") {
  CHECK_THROWS_WITH(moe::ftp_sparsity_loss(golden_pi, std::vector<float>{0.5f, 0.5f}), Catch::Contains("parameter 'pi.size()'"));
  CHECK_THROWS_WITH(moe::ftp_sparsity_loss(golden_pi, std::vector<float>{1.5f}), Catch::Contains("parameter 'sparsity[0]'"));
  CHECK_THROWS_WITH(moe::ftp_sparsity_loss(std::vector<float>{0.5f, 2.0f}, std::vector<float>{0.5f}), Catch::Contains("parameter 'pi[1]'"));
  CHECK_THROWS_WITH(moe::ftp_guide_loss(golden_pi, std::vector<float>{1, 0}), Catch::Contains("parameter 'mask.size()'"));
  CHECK_THROWS_WITH(moe::ftp_guide_loss(std::vector<float>{NAN}, std::vector<float>{1}), Catch::Contains("parameter 'pi[0]'"));
  std::vector<float> g(2);
  CHECK_THROWS_WITH(moe::ftp_guide_loss(golden_pi, golden_pi, g), Catch::Contains("parameter 'grad.size()'"));
  CHECK_THROWS_WITH(moe::ftp_distillation_loss(golden_pi, std::vector<float>{1}), Catch::Contains("parameter 'dense.size()'"));
}

}  // namespace
