// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/losses/prototypical.hpp: ProMoE's routing contrastive loss (§8).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <moe/losses/prototypical.hpp>
#include <moe/routing/routers/prototypical.hpp>

#include "../support/gradcheck.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

moe::row_matrix<float> golden_prototypes() { return moe_test::fmatrix({{1, 0}, {0, 1}, {-1, -1}}); }
moe::row_matrix<float> golden_x() { return moe_test::fmatrix({{2, 0}, {1, 1}, {0, -3}, {5, 5}}); }
const std::vector<std::uint8_t> golden_cond = {1, 1, 1, 0};

TEST_CASE("routing_contrastive_loss: golden values of spec §8 and errata 5", "[losses][prototypical][golden]") {
  const auto P = golden_prototypes();
  const auto x = golden_x();
  const moe::prototypical r(P, {.k = 1});
  const auto plan = moe_test::route(r, x, {.conditional = golden_cond});
  // Clusters {0: t0, t1} and {2: t2}; tau = 1 with the normal tolerance.
  CHECK(golden(moe::routing_contrastive_loss(x, P, plan, {.tau = 1.0}), 0.255484));
  // tau = 0.07 with relative tolerance 1e-3 (errata 5), float and double inputs.
  CHECK(moe::routing_contrastive_loss(x, P, plan, {.tau = 0.07}) == Approx(6.504006e-07).epsilon(1e-3));
  const moe::row_matrix<double> xd = x.cast<double>(), Pd = P.cast<double>();
  CHECK(moe::routing_contrastive_loss(xd, Pd, plan) == Approx(6.504006e-07).epsilon(1e-3));
  // The coefficient (lambda_RCL) multiplies; top-1 and top-K clusters agree at K = 1.
  CHECK(golden(moe::routing_contrastive_loss(x, P, plan, {.tau = 1.0, .use_topk = false, .coefficient = 10}), 2.55484));
}

TEST_CASE("routing_contrastive_loss: fewer than two clusters give 0", "[losses][prototypical]") {
  const auto P = golden_prototypes();
  const moe::prototypical r(P, {.k = 1});
  const auto x = golden_x();
  // No conditional token.
  const std::vector<std::uint8_t> none = {0, 0, 0, 0};
  std::vector<float> gx(8, 5.0f), gp(6, 5.0f);
  CHECK(moe::routing_contrastive_loss(x, P, moe_test::route(r, x, {.conditional = none}), {}, gx.data(), gp.data()) == 0.0);
  for (float g : gx) CHECK(g == 0.0f);
  for (float g : gp) CHECK(g == 0.0f);
  // One populated cluster (tokens 0 and 1 both go to expert 0).
  const std::vector<std::uint8_t> two = {1, 1, 0, 0};
  CHECK(moe::routing_contrastive_loss(x, P, moe_test::route(r, x, {.conditional = two})) == 0.0);
  // Empty batch.
  const moe::row_matrix<float> empty(0, 2);
  CHECK(moe::routing_contrastive_loss(empty, P, moe_test::route(r, empty)) == 0.0);
}

TEST_CASE("routing_contrastive_loss: top-K clusters versus first-slot clusters", "[losses][prototypical]") {
  const auto P = golden_prototypes();
  const auto x = golden_x();
  const moe::prototypical r(P, {.k = 2});
  const auto plan = moe_test::route(r, x, {.conditional = golden_cond});
  // top-2: t0 -> [0, 1], t1 -> [0, 1], t2 -> [2, 0]: clusters 0 {t0,t1,t2}, 1 {t0,t1}, 2 {t2}.
  // first slot: clusters 0 {t0, t1}, 2 {t2}: the K = 1 golden.
  CHECK(golden(moe::routing_contrastive_loss(x, P, plan, {.tau = 1.0, .use_topk = false}), 0.255484));
  // Hand computation of the top-2 variant in double.
  const double m0[2] = {1.0, -2.0 / 3}, m1[2] = {1.5, 0.5}, m2[2] = {0, -3};
  const double* m[3] = {m0, m1, m2};
  double loss = 0;
  for (int a = 0; a < 3; ++a) {
    const double pa[2] = {P(a, 0), P(a, 1)};
    const double pn = std::hypot(pa[0], pa[1]);
    double l[3], total = 0;
    for (int b = 0; b < 3; ++b) {
      l[b] = (pa[0] * m[b][0] + pa[1] * m[b][1]) / (pn * std::hypot(m[b][0], m[b][1]));
      total += std::exp(l[b]);
    }
    loss += std::log(total) - l[a];
  }
  CHECK(moe::routing_contrastive_loss(x, P, plan, {.tau = 1.0}) == Approx(loss / 3).epsilon(1e-9));
}

TEST_CASE("routing_contrastive_loss: gradients w.r.t. prototypes and token states equal central differences",
          "[losses][prototypical][gradient]") {
  moe_test::rng rng(811);
  const index N = 4, d = 5, T = 12;
  const auto P = rng.matrix(N, d);
  const auto x = rng.matrix(T, d);
  std::vector<std::uint8_t> cond(T, 1);
  cond[3] = 0;
  for (const int k : {1, 2}) {
    const moe::prototypical r(P, {.k = k});
    const auto plan = moe_test::route(r, x, {.conditional = cond});
    for (const bool topk : {true, false}) {
      for (const double tau : {1.0, 0.3}) {
        const moe::rcl_options o{.tau = tau, .use_topk = topk, .coefficient = 1.3};
        // params = [x ; P] in double; the plan (the clusters) stays fixed.
        std::vector<double> params(static_cast<std::size_t>((T + N) * d));
        for (index i = 0; i < T * d; ++i) params[i] = x.data()[i];
        for (index i = 0; i < N * d; ++i) params[T * d + i] = P.data()[i];
        auto loss = [&](const std::vector<double>& v) {
          return moe::routing_contrastive_loss(moe::map(v.data(), T, d), moe::map(v.data() + T * d, N, d), plan, o);
        };
        std::vector<double> grad(params.size());
        moe::routing_contrastive_loss(moe::map(params.data(), T, d), moe::map(params.data() + T * d, N, d), plan, o,
                                      grad.data(), grad.data() + T * d);
        INFO("k " << k << " topk " << topk << " tau " << tau);
        CHECK(moe_test::max_relative_error(grad, moe_test::numerical_gradient(loss, params), 1e-4) < 1e-3);
        for (index i = 0; i < d; ++i) CHECK(grad[3 * d + i] == 0.0);  // the unconditional token
      }
    }
  }
}

TEST_CASE("routing_contrastive_loss: errors name the parameter", "[losses][prototypical][error]") {
  const auto P = golden_prototypes();
  const auto x = golden_x();
  const moe::prototypical r(P, {.k = 1});
  const auto plan = moe_test::route(r, x);
  moe_test::throws_naming([&] { moe::routing_contrastive_loss(x, P, plan, {.tau = 0}); }, "tau");
  moe_test::throws_naming([&] { moe::routing_contrastive_loss(x, P, plan, {.eps = -1}); }, "eps");
  const moe::row_matrix<float> P3 = moe::row_matrix<float>::Zero(3, 3);
  moe_test::throws_naming([&] { moe::routing_contrastive_loss(x, P3, plan); }, "prototypes.cols()");
  const moe::row_matrix<float> x3 = x.topRows(3);
  moe_test::throws_naming([&] { moe::routing_contrastive_loss(x3, P, plan); }, "plan.num_tokens()");
  auto xn = x;
  xn(0, 0) = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe::routing_contrastive_loss(xn, P, plan); }, "x");
}

}  // namespace
