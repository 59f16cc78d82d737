// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/dynmole.hpp: DynMoLE's entropy and load-balancing losses (§10).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/losses/dynmole.hpp>

#include "../support/gradcheck.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

TEST_CASE("dynmole_loss: golden values of spec §10", "[losses][dynmole][golden]") {
  const auto z = moe_test::fmatrix({{3, 1, 0, -1}, {0.1, 0, 0, -0.1}, {2, 1.5, 0, 0}});
  const moe::dynmole r(moe_test::eye(4));
  const auto plan = moe_test::route_logits(r, z);
  const auto l = moe::dynmole_loss(z, plan, r.options());
  CHECK(golden(l.load_balance, 1.474411));
  CHECK(golden(l.entropy, 0.729459));
  CHECK(golden(l.total, 0.008769));
  const moe::row_matrix<double> zd = z.cast<double>();
  CHECK(golden(moe::dynmole_loss(zd, plan, r.options(), {.entropy_coefficient = 1, .balance_coefficient = 0}).total,
               0.729459));
}

TEST_CASE("dynmole_loss: gradient equals central differences", "[losses][dynmole][gradient]") {
  moe_test::rng rng(1011);
  const index T = 7, E = 5;
  moe::row_matrix<float> z0 = rng.matrix(T, E, 2.0f);
  for (const auto kind : {moe::dynmole_entropy::tsallis, moe::dynmole_entropy::renyi}) {
    for (const float q : {1.1f, 1.0f, 2.0f}) {
      const moe::dynmole r(moe_test::eye(E), {.q = q, .entropy_threshold = 0.95f, .entropy = kind});
      const auto plan = moe_test::route_logits(r, z0);  // masks: constants
      const moe::dynmole_loss_options o{.entropy_coefficient = 0.7, .balance_coefficient = 0.4};
      std::vector<double> params(z0.data(), z0.data() + T * E);
      auto loss = [&](const std::vector<double>& v) {
        return moe::dynmole_loss(moe::map(v.data(), T, E), plan, r.options(), o).total;
      };
      std::vector<double> grad(params.size());
      moe::dynmole_loss(moe::map(params.data(), T, E), plan, r.options(), o, grad.data());
      INFO("q " << q << " renyi " << (kind == moe::dynmole_entropy::renyi));
      CHECK(moe_test::max_relative_error(grad, moe_test::numerical_gradient(loss, params)) < 1e-3);
    }
  }
}

TEST_CASE("dynmole_loss: empty batch, degenerate rows, E = 1, errors", "[losses][dynmole][error]") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  const moe::dynmole r(moe_test::eye(3));
  const moe::row_matrix<double> empty(0, 3);
  moe::routing_plan p0;
  p0.reset(0, 3, 3);
  CHECK(moe::dynmole_loss(empty, p0, r.options()).total == 0.0);
  // A degenerate (all -inf) row and a saturated (+inf) row have gradient 0.
  const auto z = moe_test::dmatrix({{-inf, -inf, -inf}, {inf, 0, 1}, {0.2, 0.1, -0.3}});
  const auto plan = moe_test::route_logits(r, moe::row_matrix<float>(z.cast<float>()));
  std::vector<double> g(9, 5.0);
  const auto l = moe::dynmole_loss(z, plan, r.options(), {}, g.data());
  CHECK(std::isfinite(l.total));
  for (int i = 0; i < 6; ++i) CHECK(g[i] == 0.0);
  CHECK(g[6] != 0.0);
  // E = 1: H = 0 and L_LB = 1 · f · P = 1.
  const moe::dynmole one(moe_test::eye(1), {.keep_top_k = 1});
  const auto z1 = moe_test::dmatrix({{0.5}, {-2}});
  const auto l1 = moe::dynmole_loss(z1, moe_test::route_logits(one, moe::row_matrix<float>(z1.cast<float>())),
                                    one.options(), {.entropy_coefficient = 1, .balance_coefficient = 1});
  CHECK(l1.entropy == 0.0);
  CHECK(l1.load_balance == Approx(1.0));
  moe_test::throws_naming([&] { (void)moe::dynmole_loss(z1, plan, r.options()); }, "plan.num_tokens()");
  const auto z3 = moe_test::dmatrix({{0, 1}, {1, 0}, {0, 0}});
  moe_test::throws_naming([&] { (void)moe::dynmole_loss(z3, plan, r.options()); }, "plan.num_experts()");
  auto zn = z;
  zn(2, 0) = std::numeric_limits<double>::quiet_NaN();
  moe_test::throws_naming([&] { (void)moe::dynmole_loss(zn, plan, r.options()); }, "logits");
  moe_test::throws_naming([&] { (void)moe::dynmole_loss(z, plan, r.options(), {.entropy_coefficient = inf}); },
                          "entropy_coefficient");
}

}  // namespace
