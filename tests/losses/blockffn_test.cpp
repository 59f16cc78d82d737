// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/blockffn.hpp: chunk sparsification and activation locality (§11).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/losses/blockffn.hpp>

#include "../support/gradcheck.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

moe::row_matrix<double> golden_r() {
  return moe_test::dmatrix({{1, -1, 2, 0}, {0.5, -0.5, 1, -2}, {-1, -2, -3, -0.5}, {0, 3, 0, 1}});
}

TEST_CASE("blockffn losses: golden values of spec §11 (errata 7)", "[losses][blockffn][golden]") {
  const auto r = golden_r();
  CHECK(golden(moe::chunk_sparsification_loss(r, {.chunk_length = 2, .coefficient = 1}), 0.305538));
  CHECK(golden(moe::activation_locality_loss(r, {.steepness = 1, .coefficient = 1}), 0.957852));
  CHECK(golden(moe::activation_locality_loss(r, {.steepness = 100, .coefficient = 1}), 50.057762));
  // Float scores and the default coefficients (5e-2, 2e-3).
  const moe::row_matrix<float> rf = r.cast<float>();
  CHECK(golden(moe::chunk_sparsification_loss(rf, {.chunk_length = 2}), 5e-2 * 0.305538));
  CHECK(golden(moe::activation_locality_loss(rf), 2e-3 * 50.057762));
}

TEST_CASE("blockffn losses: sequences, padding and the 1e-5 that keeps p = 1 finite", "[losses][blockffn]") {
  const auto r = golden_r();
  // Two sequences of two tokens: the pair (1, 2) is gone, 8 terms instead of 12.
  const std::vector<index> starts = {0, 2};
  const double all = moe::activation_locality_loss(r, {.steepness = 1, .coefficient = 1}) * 12;
  double pair12 = 0;
  for (int e = 0; e < 4; ++e) {
    const double x = r(1, e), y = 1 / (1 + std::exp(-r(2, e)));
    pair12 += std::log1p(std::exp(x)) - x * y;
  }
  CHECK(moe::activation_locality_loss(r, {.steepness = 1, .coefficient = 1, .sequence_starts = starts}) ==
        Approx((all - pair12) / 8).epsilon(1e-9));
  // Chunks do not cross sequences; the chunk loss equals the one-sequence value here.
  CHECK(moe::chunk_sparsification_loss(r, {.chunk_length = 2, .coefficient = 1, .sequence_starts = starts}) ==
        Approx(0.305538).epsilon(1e-5));
  // Padding: padded tokens have p = 0, so chunk 1 = {t2, t3} gives Π = (1 + 1e-5)² for every
  // expert, while chunk 0 keeps its golden products (p of t0 = p of t1 = [1/3, 0, 2/3, 0], §11).
  const std::vector<std::uint8_t> valid = {1, 1, 0, 0};
  const double d = 1e-5;
  const double p01[4] = {0.333332, 0, 0.666664, 0};
  double chunk0 = 0;
  for (double v : p01) chunk0 += (1 - v + d) * (1 - v + d);
  const double padded = 1 - (chunk0 + 4 * (1 + d) * (1 + d)) / 8;
  CHECK(moe::chunk_sparsification_loss(r, {.chunk_length = 2, .coefficient = 1, .valid = valid}) ==
        Approx(padded).epsilon(1e-5));
  std::vector<double> g(16, 7.0);
  moe::chunk_sparsification_loss(r, {.chunk_length = 2, .coefficient = 1, .valid = valid}, g.data());
  for (int i = 8; i < 16; ++i) CHECK(g[i] == 0.0);  // no gradient through padding
  // One active expert: p = â / (â + 1e-5) ≈ 1, and log(1 - p + 1e-5) stays finite.
  const auto one = moe_test::dmatrix({{5, -1}, {3, -2}});
  std::vector<double> g1(4);
  const double l1 = moe::chunk_sparsification_loss(one, {.chunk_length = 2, .coefficient = 1}, g1.data());
  CHECK(std::isfinite(l1));
  for (double v : g1) CHECK(std::isfinite(v));
  // Empty batch.
  const moe::row_matrix<double> empty(0, 4);
  CHECK(moe::chunk_sparsification_loss(empty) == 0.0);
  CHECK(moe::activation_locality_loss(empty) == 0.0);
}

TEST_CASE("blockffn losses: gradients w.r.t. the raw scores equal central differences", "[losses][blockffn][gradient]") {
  moe_test::rng rng(1111);
  const index T = 6, E = 5;
  std::vector<double> params(static_cast<std::size_t>(T * E));
  for (auto& v : params) {
    v = rng.uniform(-1, 1);
    if (std::abs(v) < 0.05) v += 0.2;  // keep away from the ReLU kink
  }
  const std::vector<index> starts = {0, 4};
  for (const index Lc : {1, 2}) {
    const moe::chunk_sparsification_options o{.chunk_length = Lc, .coefficient = 0.9, .sequence_starts = starts};
    auto loss = [&](const std::vector<double>& v) { return moe::chunk_sparsification_loss(moe::map(v.data(), T, E), o); };
    std::vector<double> grad(params.size());
    moe::chunk_sparsification_loss(moe::map(params.data(), T, E), o, grad.data());
    INFO("chunk length " << Lc);
    CHECK(moe_test::max_relative_error(grad, moe_test::numerical_gradient(loss, params)) < 1e-3);
  }
  for (const double s : {1.0, 7.0}) {
    const moe::activation_locality_options o{.steepness = s, .coefficient = 0.8, .sequence_starts = starts};
    auto loss = [&](const std::vector<double>& v) { return moe::activation_locality_loss(moe::map(v.data(), T, E), o); };
    std::vector<double> grad(params.size());
    moe::activation_locality_loss(moe::map(params.data(), T, E), o, grad.data());
    INFO("steepness " << s);
    CHECK(moe_test::max_relative_error(grad, moe_test::numerical_gradient(loss, params, 1e-6)) < 1e-3);
  }
}

TEST_CASE("blockffn losses: errors name the parameter", "[losses][blockffn][error]") {
  const auto r = golden_r();
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(r, {.chunk_length = 3}); }, "chunk_length");
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(r, {.chunk_length = 0}); }, "chunk_length");
  const std::vector<index> odd = {0, 3};
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(r, {.chunk_length = 2, .sequence_starts = odd}); },
                          "chunk_length");
  const std::vector<std::uint8_t> short_valid = {1, 1};
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(r, {.chunk_length = 2, .valid = short_valid}); },
                          "valid.size()");
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(r, {.chunk_length = 2, .eps = -1}); }, "eps");
  auto bad = r;
  bad(0, 0) = std::numeric_limits<double>::infinity();
  moe_test::throws_naming([&] { (void)moe::chunk_sparsification_loss(bad, {.chunk_length = 2}); }, "scores");
  moe_test::throws_naming([&] { (void)moe::activation_locality_loss(bad); }, "scores");
  moe_test::throws_naming([&] { (void)moe::activation_locality_loss(r, {.steepness = std::nan("")}); }, "steepness");
  moe_test::throws_naming([&] { (void)moe::activation_locality_loss(r, {.steepness = 0}); }, "steepness");
  moe_test::throws_naming([&] { (void)moe::activation_locality_loss(r, {.steepness = -100}); }, "steepness");
  const std::vector<index> bad_starts = {2};
  moe_test::throws_naming([&] { (void)moe::activation_locality_loss(r, {.sequence_starts = bad_starts}); },
                          "ctx.sequence_starts[0]");
}

}  // namespace
