// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/null_experts.hpp: AdaMoE's null-aware load-balancing loss (§7).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <vector>

#include <moe/losses/null_experts.hpp>

#include "../support/gradcheck.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

moe::row_matrix<double> golden_logits() { return moe_test::dmatrix({{2, 1, 0, 0}, {1, -1, 0.5, 0}, {-1, 0, 1, 1}}); }

TEST_CASE("null_experts_balance_loss: golden values of spec §7 and errata 4", "[losses][null_experts][golden]") {
  const auto z = golden_logits();
  using moe::lbl_normalization;
  CHECK(golden(moe::null_experts_balance_loss(z, 2, 2, {.coefficient = 1}), 1.078081));
  CHECK(golden(moe::null_experts_balance_loss(z, 2, 2, {.coefficient = 1, .null_averaging = false}), 1.090649));
  CHECK(golden(moe::null_experts_balance_loss(
                   z, 2, 2, {.coefficient = 1, .null_averaging = false, .normalization = lbl_normalization::hf_mixtral}),
               2.181299));
  // hf_mixtral is k times per_assignment when every token fills its k slots.
  CHECK(moe::null_experts_balance_loss(z, 2, 2, {.coefficient = 1, .normalization = lbl_normalization::hf_mixtral}) ==
        Approx(2 * 1.078081).epsilon(2e-6));
  // The coefficient multiplies; the default is AdaMoE's 1e-4. Float logits give the same value.
  CHECK(golden(moe::null_experts_balance_loss(z, 2, 2) * 1e4, 1.078081));
  const moe::row_matrix<float> zf = z.cast<float>();
  CHECK(golden(moe::null_experts_balance_loss(zf, 2, 2, {.coefficient = 1}), 1.078081));
}

TEST_CASE("null_experts_balance_loss: m = 0 is the top-k load-balancing loss of spec §2.5", "[losses][null_experts][golden]") {
  const auto z = moe_test::dmatrix({{1, 0, -1, 0.5}, {0, 1, 0.5, 0.5}, {1, 1, -0.5, 1}});
  CHECK(golden(moe::null_experts_balance_loss(z, 4, 2, {.coefficient = 1}), 1.066415));
  CHECK(golden(moe::null_experts_balance_loss(
                   z, 4, 2, {.coefficient = 1, .normalization = moe::lbl_normalization::hf_mixtral}),
               2.132831));
}

TEST_CASE("null_experts_balance_loss: gradient equals central differences", "[losses][null_experts][gradient]") {
  moe_test::rng rng(711);
  const index T = 6, E = 3, m = 3, C = E + m;
  for (const bool averaging : {true, false}) {
    for (const auto norm : {moe::lbl_normalization::per_assignment, moe::lbl_normalization::hf_mixtral}) {
      for (const index k : {1, 2, 4}) {
        const moe::null_experts_balance_options o{.coefficient = 0.7, .null_averaging = averaging, .normalization = norm};
        std::vector<double> params(static_cast<std::size_t>(T * C));
        for (auto& v : params) v = 2.0 * rng.uniform();
        auto loss = [&](const std::vector<double>& v) {
          return moe::null_experts_balance_loss(moe::map(v.data(), T, C), E, k, o);
        };
        std::vector<double> grad(params.size());
        moe::null_experts_balance_loss(moe::map(params.data(), T, C), E, k, o, grad.data());
        INFO("averaging " << averaging << " k " << k);
        CHECK(moe_test::max_relative_error(grad, moe_test::numerical_gradient(loss, params)) < 1e-3);
      }
    }
  }
}

TEST_CASE("null_experts_balance_loss: ±inf rows, empty batch and bad input", "[losses][null_experts][error]") {
  constexpr double inf = std::numeric_limits<double>::infinity();
  auto z = moe_test::dmatrix({{inf, 1, 0, 0}, {-inf, -inf, -inf, -inf}, {0, -inf, 1, 2}});
  std::vector<double> g(12, 99.0);
  const double l = moe::null_experts_balance_loss(z, 2, 2, {.coefficient = 1}, g.data());
  CHECK(std::isfinite(l));
  for (int j = 0; j < 8; ++j) CHECK(g[j] == 0.0);  // saturated and degenerate rows
  CHECK(g[9] == 0.0);                              // a -inf entry
  CHECK(g[8] != 0.0);

  const moe::row_matrix<double> empty(0, 4);
  CHECK(moe::null_experts_balance_loss(empty, 2, 2) == 0.0);
  z(2, 2) = std::numeric_limits<double>::quiet_NaN();
  moe_test::throws_naming([&] { moe::null_experts_balance_loss(z, 2, 2); }, "logits");
  const auto ok = golden_logits();
  moe_test::throws_naming([&] { moe::null_experts_balance_loss(ok, 2, 5); }, "k");
  moe_test::throws_naming([&] { moe::null_experts_balance_loss(ok, 2, 0); }, "k");
  moe_test::throws_naming([&] { moe::null_experts_balance_loss(ok, 0, 2); }, "num_true");
  moe_test::throws_naming([&] { moe::null_experts_balance_loss(ok, 2, 2, {.coefficient = inf}); }, "coefficient");
}

}  // namespace
