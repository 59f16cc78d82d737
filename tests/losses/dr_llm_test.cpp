// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/dr_llm.hpp: docs/routing-spec.md §13.1 focal loss and class weights.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include <moe/losses/dr_llm.hpp>
#include <moe/routing/depth/dr_llm.hpp>

#include "../support/gradcheck.hpp"
#include "../support/random.hpp"
#include "../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
// The §13.1 golden logits, computed by the golden router.
std::vector<float> golden_logits() {
  moe::row_matrix<float> w1 = moe::row_matrix<float>::Identity(2, 2), w2(3, 2), h(5, 2);
  w2 << 1, -1, 0.5f, 0.5f, -1, 1;
  h << 1, 2, 3, 0, 0, 1, 2, 2, 10, 10;
  const moe::dr_llm r(w1, std::vector<float>{0, 0}, w2, std::vector<float>{0, 0.2f, -0.5f}, {.windows = 2});
  moe::workspace ws;
  ws.reset();
  const auto z = r.sequence_logits(moe::view(std::as_const(h)), ws);
  return {z.begin(), z.end()};
}

const std::vector<double> dr_llm_counts = {4399, 120956, 1457};
}  // namespace

TEST_CASE("focal loss: golden §13.1 class weights and losses", "[dr_llm][loss][golden]") {
  const auto alpha = moe::effective_number_weights(dr_llm_counts, 0.999);
  REQUIRE(alpha.size() == 3);
  CHECK(golden(alpha[0], 0.915993));
  CHECK(golden(alpha[1], 0.904760));
  CHECK(golden(alpha[2], 1.179247));
  CHECK(golden(alpha[0] + alpha[1] + alpha[2], 3.0));
  const auto z = golden_logits();
  const moe::focal_options opt{.alpha = alpha, .gamma = 2.0};
  const std::int32_t exec = 1, repeat = 2, skip = 0;
  CHECK(golden(moe::focal_loss(z, std::span<const std::int32_t>(&exec, 1), opt), 0.026809));
  CHECK(golden(moe::focal_loss(z, std::span<const std::int32_t>(&repeat, 1), opt), 2.602843));
  CHECK(golden(moe::focal_loss(z, std::span<const std::int32_t>(&skip, 1), opt), 0.857922));
  // Mean over (example, layer) rows.
  std::vector<float> zz = z;
  zz.insert(zz.end(), z.begin(), z.end());
  const std::vector<std::int32_t> labels = {1, 2};
  CHECK(golden(moe::focal_loss(zz, labels, opt), (0.026809 + 2.602843) / 2));
  // gamma = 0 is weighted cross-entropy: alpha_exec * -log p_exec.
  CHECK(golden(moe::focal_loss(z, std::span<const std::int32_t>(&exec, 1), {.alpha = alpha, .gamma = 0.0}),
               0.904760 * -std::log(0.707416)));
  // No alpha: weight 1. beta = 0: equal weights.
  CHECK(golden(moe::focal_loss(z, std::span<const std::int32_t>(&exec, 1), {.gamma = 0.0}), -std::log(0.707416)));
  CHECK(moe::effective_number_weights(dr_llm_counts, 0.0) == std::vector<double>{1, 1, 1});
  CHECK(moe::focal_loss(std::vector<float>{}, std::vector<std::int32_t>{}, opt) == 0.0);
}

TEST_CASE("focal loss: gradient matches central differences (gamma 0, 0.5, 2)", "[dr_llm][loss][gradient]") {
  moe_test::rng rng(19);
  const auto alpha = moe::effective_number_weights(dr_llm_counts, 0.999);
  for (const double gamma : {0.0, 0.5, 2.0}) {
    for (int rep = 0; rep < 3; ++rep) {
      const index N = rng.integer(1, 6);
      std::vector<double> z(static_cast<std::size_t>(3 * N)), grad(z.size());
      std::vector<std::int32_t> labels(static_cast<std::size_t>(N));
      for (auto& v : z) v = rng.uniform(-3.0f, 3.0f);
      for (auto& y : labels) y = rng.integer(0, 2);
      const moe::focal_options opt{.alpha = alpha, .gamma = gamma};
      moe::focal_loss(z, labels, opt, grad);
      const auto num = moe_test::numerical_gradient([&](const std::vector<double>& p) { return moe::focal_loss(p, labels, opt); }, z);
      INFO("gamma " << gamma << " N " << N);
      CHECK(moe_test::max_relative_error(grad, num) < 1e-3);
    }
  }
  // A confident correct prediction (p_y -> 1): finite gradient, near 0. At ±40, p_y rounds to 1 in
  // double, so the loss is exactly 0; at ±10 it is (1-p)^0.5 · (-log p) with 1 - p = 2e^-20/(1+2e^-20).
  std::vector<double> z = {-40, 40, -40}, grad(3);
  const std::int32_t y = 1;
  CHECK(moe::focal_loss(z, std::span<const std::int32_t>(&y, 1), {.gamma = 0.5}, grad) == 0.0);
  for (double g : grad) CHECK(std::abs(g) < 1e-12);
  const std::vector<double> z10 = {-10, 10, -10};
  const double q10 = 2 * std::exp(-20.0) / (1 + 2 * std::exp(-20.0));
  CHECK(moe::focal_loss(z10, std::span<const std::int32_t>(&y, 1), {.gamma = 0.5}) ==
        Approx(std::sqrt(q10) * std::log1p(2 * std::exp(-20.0))).epsilon(1e-6));
  // Float overload: same gradient to float precision.
  std::vector<float> zf = golden_logits(), gf(3);
  std::vector<double> zd(zf.begin(), zf.end()), gd(3);
  const std::int32_t r = 2;
  moe::focal_loss(zf, std::span<const std::int32_t>(&r, 1), {}, gf);
  moe::focal_loss(zd, std::span<const std::int32_t>(&r, 1), {}, gd);
  for (int c = 0; c < 3; ++c) CHECK(gf[c] == Approx(gd[c]).epsilon(1e-6));
}

TEST_CASE("focal loss and class weights: errors name the parameter", "[dr_llm][loss][error]") {
  CHECK_THROWS_WITH(moe::effective_number_weights(dr_llm_counts, 1.0), Catch::Contains("parameter 'beta'"));
  CHECK_THROWS_WITH(moe::effective_number_weights(dr_llm_counts, -0.1), Catch::Contains("parameter 'beta'"));
  CHECK_THROWS_WITH(moe::effective_number_weights(std::vector<double>{3, 0, 2}, 0.9), Catch::Contains("parameter 'class_counts[1]'"));
  CHECK_THROWS_WITH(moe::effective_number_weights(std::vector<double>{}, 0.9), Catch::Contains("parameter 'class_counts.size()'"));
  const std::vector<float> z = {0, 1, 2};
  const std::vector<std::int32_t> y = {1};
  CHECK_THROWS_WITH(moe::focal_loss(z, y, {.gamma = -1}), Catch::Contains("parameter 'gamma'"));
  CHECK_THROWS_WITH(moe::focal_loss(z, y, {.alpha = {1, 1}}), Catch::Contains("parameter 'alpha.size()'"));
  CHECK_THROWS_WITH(moe::focal_loss(z, y, {.alpha = {1, -1, 1}}), Catch::Contains("parameter 'alpha[1]'"));
  CHECK_THROWS_WITH(moe::focal_loss(z, y, {.classes = 0}), Catch::Contains("parameter 'classes'"));
  CHECK_THROWS_WITH(moe::focal_loss(z, std::vector<std::int32_t>{3}), Catch::Contains("parameter 'labels[0]'"));
  CHECK_THROWS_WITH(moe::focal_loss(z, std::vector<std::int32_t>{1, 1}), Catch::Contains("parameter 'logits.size()'"));
  std::vector<float> g(2);
  CHECK_THROWS_WITH(moe::focal_loss(z, y, {}, g), Catch::Contains("parameter 'grad.size()'"));
  CHECK_THROWS_WITH(moe::focal_loss(std::vector<float>{0, NAN, 1}, y), Catch::Contains("parameter 'logits[1]'"));
}

}  // namespace
