// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/routers/dynmole.hpp: DynMoLE hybrid top-p / Tsallis broadcast routing (§10).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include <moe/routing/routers/dynmole.hpp>

#include "../../support/naive.hpp"
#include "../../support/policies.hpp"
#include "../../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;
using moe_test::golden;
constexpr float inf = std::numeric_limits<float>::infinity();

moe::row_matrix<float> golden_z() { return moe_test::fmatrix({{3, 1, 0, -1}, {0.1, 0, 0, -0.1}, {2, 1.5, 0, 0}}); }

TEST_CASE("dynmole: golden example of spec §10", "[routing][dynmole][golden]") {
  const moe::dynmole r(moe_test::eye(4));  // x = z
  CHECK(r.max_slots() == 4);
  const auto plan = moe_test::route(r, golden_z());
  check_slots(plan, 0, {0, 1, moe::no_expert}, {0.830953, 0.112457, 0});
  check_slots(plan, 1, {0, 1, 2, 3}, {0.275603, 0.249376, 0.249376, 0.225645});  // H > 0.9: broadcast, g = p
  check_slots(plan, 2, {0, 1, moe::no_expert}, {0.532708, 0.323104, 0});
  // The normalised Tsallis entropies.
  const float p[3][4] = {{0.830953f, 0.112457f, 0.041371f, 0.015219f},
                         {0.275603f, 0.249376f, 0.249376f, 0.225645f},
                         {0.532708f, 0.323104f, 0.072094f, 0.072094f}};
  CHECK(golden(r.normalised_entropy(p[0]), 0.415415));
  CHECK(golden(r.normalised_entropy(p[1]), 0.997857));
  CHECK(golden(r.normalised_entropy(p[2]), 0.775104));
  const auto s = r.policy_stats(plan);
  CHECK(s.mean_experts_per_token == Approx(8.0 / 3));
  CHECK(s.all_experts_fraction == Approx(1.0 / 3));
}

TEST_CASE("dynmole: the router's Tsallis and Shannon entropies are the canonical kernel's", "[routing][dynmole]") {
  // The broadcast test uses kernels::tsallis_entropy (the same bits on every ISA) over its
  // maximum (1 - E^(1-q)) / (q - 1), or log E at q = 1, computed in double.
  moe_test::rng rng(1002);
  const index E = 6;
  for (const float q : {1.1f, 1.0f, 2.0f, 0.5f}) {
    const moe::dynmole r(moe_test::eye(E), {.q = q, .entropy_eps = 1e-5f});
    const double qd = q;
    const double h_max = q == 1.0f ? std::log(6.0) : (1.0 - std::pow(6.0, 1.0 - qd)) / (qd - 1.0);
    for (int rep = 0; rep < 20; ++rep) {
      std::vector<float> z(static_cast<std::size_t>(E)), p(static_cast<std::size_t>(E));
      for (auto& v : z) v = rng.uniform(-3.0f, 3.0f);
      moe::kernels::softmax(z.data(), E, p.data());
      INFO("q " << q);
      CHECK(r.normalised_entropy(p.data()) ==
            static_cast<double>(moe::kernels::tsallis_entropy(p.data(), E, q, 1e-5f)) / h_max);
    }
  }
}

TEST_CASE("dynmole: the expert that crosses top_p is not kept unless keep_top_k forces it", "[routing][dynmole]") {
  // p = softmax(log [0.5, 0.3, 0.2]) = [0.5, 0.3, 0.2]: C = [0.5, 0.8, 1.0].
  const auto z = moe_test::fmatrix({{std::log(0.5), std::log(0.3), std::log(0.2)}});
  const moe::row_matrix<float> I = moe_test::eye(3);
  const auto plan = [&](moe::dynmole_options o) { return moe_test::route_logits(moe::dynmole(I, o), z); };
  CHECK(plan({.top_p = 0.75f, .keep_top_k = 1, .entropy_threshold = 1}).active_slots(0) == 1);
  CHECK(plan({.top_p = 0.85f, .keep_top_k = 1, .entropy_threshold = 1}).active_slots(0) == 2);
  CHECK(plan({.top_p = 0.75f, .keep_top_k = 3, .entropy_threshold = 1}).active_slots(0) == 3);
  CHECK(plan({.top_p = 0.4f, .keep_top_k = 0, .entropy_threshold = 1}).active_slots(0) == 0);  // legal: nowhere
  CHECK(plan({.top_p = 1.0f, .keep_top_k = 0, .entropy_threshold = 1}).active_slots(0) == 3);  // top_p >= 1 keeps all
  CHECK(plan({.top_p = 0.0f, .keep_top_k = 2, .entropy_threshold = 1}).active_slots(0) == 2);
  // Weights are the probabilities, never renormalised.
  check_slots(plan({.top_p = 0.75f, .keep_top_k = 2, .entropy_threshold = 1}), 0, {0, 1}, {0.5, 0.3});
}

TEST_CASE("dynmole: Shannon branch at q = 1, Rényi option, E = 1", "[routing][dynmole]") {
  const moe::row_matrix<float> I = moe_test::eye(4);
  const float p[4] = {0.4f, 0.3f, 0.2f, 0.1f};
  const double eps = 1e-5;
  double shannon = 0, power = 0;
  for (float v : p) {
    shannon -= (v + eps) * std::log(v + eps);
    power += std::pow(v + eps, 2.0);
  }
  // Shannon and Tsallis: the fp32 canonical kernel (golden tolerance); Rényi: double.
  const moe::dynmole q1(I, {.q = 1.0f});
  CHECK(golden(q1.normalised_entropy(p), shannon / std::log(4.0)));
  const moe::dynmole renyi(I, {.q = 2.0f, .entropy = moe::dynmole_entropy::renyi});
  CHECK(renyi.normalised_entropy(p) == Approx(std::log(power + 1e-10) / (1 - 2.0) / std::log(4.0)).epsilon(1e-9));
  const moe::dynmole tsallis(I, {.q = 2.0f});
  CHECK(golden(tsallis.normalised_entropy(p), (1 - power) / (1 - 1.0 / 4)));
  // Rényi broadcast: the entropy of [0.4, 0.3, 0.2, 0.1] is above 0.8 -> all four experts.
  const auto z = moe_test::fmatrix({{std::log(0.4), std::log(0.3), std::log(0.2), std::log(0.1)}});
  const moe::dynmole broadcast(I, {.q = 2.0f, .entropy_threshold = 0.8f, .entropy = moe::dynmole_entropy::renyi});
  REQUIRE(renyi.normalised_entropy(p) > 0.8);
  CHECK(moe_test::route_logits(broadcast, z).active_slots(0) == 4);
  // E = 1: H_max = 0 -> H = 0 (never broadcast); the single expert is kept by keep_top_k.
  const moe::dynmole one(moe_test::eye(1), {.keep_top_k = 1, .entropy_threshold = -1});
  const float p1[1] = {1.0f};
  CHECK(one.normalised_entropy(p1) == 0.0);
  const auto plan = moe_test::route_logits(one, moe_test::fmatrix({{0.3}}));
  check_slots(plan, 0, {0}, {1.0});
}

TEST_CASE("dynmole: -inf logits are never selected, not even by a broadcast", "[routing][dynmole][inf]") {
  const moe::dynmole r(moe_test::eye(4), {.entropy_threshold = 0.0f});  // always broadcast
  const auto plan = moe_test::route_logits(r, moe_test::fmatrix({{0, -inf, 0, 1}, {-inf, -inf, -inf, -inf}}));
  CHECK(plan.active_slots(0) == 3);
  CHECK(plan.expert(0, 0) == 3);
  CHECK(plan.expert(0, 1) == 0);
  CHECK(plan.expert(0, 2) == 2);
  CHECK(plan.active_slots(1) == 0);
  auto z = golden_z();
  z(2, 1) = std::numeric_limits<float>::quiet_NaN();
  moe_test::throws_naming([&] { moe_test::route_logits(moe::dynmole(moe_test::eye(4)), z); }, "z");
  const moe::dynmole sanitised(moe_test::eye(4), {.nan = moe::nan_policy::to_neg_inf});
  const auto ps = moe_test::route_logits(sanitised, z);
  for (index s = 0; s < 4; ++s) CHECK(ps.expert(2, s) != 1);
}

TEST_CASE("dynmole equals a naive double reference on random tokens", "[routing][dynmole]") {
  moe_test::rng rng(1001);
  const index E = 6, d = 12, T = 200;
  const auto w = rng.matrix(E, d, 2.0f);
  const auto x = rng.matrix(T, d);
  const moe::dynmole r(w);  // defaults: top_p 0.75, keep 2, q 1.1, threshold 0.9
  const auto plan = moe_test::route(r, x);
  index broadcasts = 0;
  for (index t = 0; t < T; ++t) {
    const auto z = moe_test::naive_logits(w, x.data() + t * d);
    const auto p = moe_test::naive_softmax(z);
    double s = 0;
    for (double v : p) s += std::pow(v + 1e-5, static_cast<double>(1.1f));
    const double h = (1 - s) / (1 - std::pow(6.0, 1 - static_cast<double>(1.1f)));
    const auto order = moe_test::brute_force_top_k(z, E);
    index keep = E;
    if (h <= 0.9) {
      double c = 0;
      keep = 0;
      for (index rnk = 0; rnk < E; ++rnk) {
        c += p[order[rnk]];
        if (c <= 0.75 || rnk < 2) keep = rnk + 1;
      }
    } else {
      ++broadcasts;
    }
    INFO("token " << t);
    REQUIRE(plan.active_slots(t) == keep);
    for (index rnk = 0; rnk < keep; ++rnk) {
      REQUIRE(plan.expert(t, rnk) == order[rnk]);
      REQUIRE(plan.weight(t, rnk) == Approx(p[order[rnk]]).margin(1e-6));
    }
  }
  CHECK(broadcasts > 0);
  CHECK(broadcasts < T);
}

TEST_CASE("dynmole: errors name the parameter", "[routing][dynmole][error]") {
  const moe::row_matrix<float> I = moe_test::eye(4);
  moe_test::throws_naming([&] { moe::dynmole(I, {.top_p = -0.1f}); }, "top_p");
  moe_test::throws_naming([&] { moe::dynmole(I, {.keep_top_k = 5}); }, "keep_top_k");
  moe_test::throws_naming([&] { moe::dynmole(I, {.keep_top_k = -1}); }, "keep_top_k");
  moe_test::throws_naming([&] { moe::dynmole(I, {.q = 0.0f}); }, "q");
  moe_test::throws_naming([&] { moe::dynmole(I, {.entropy_threshold = inf}); }, "entropy_threshold");
  moe_test::throws_naming([&] { moe::dynmole(I, {.entropy_eps = -1.0f}); }, "entropy_eps");
  const moe::dynmole r(I);
  moe_test::throws_naming([&] { moe_test::route(r, moe::row_matrix<float>::Zero(2, 3)); }, "x.cols()");
  moe_test::throws_naming([&] { moe_test::route_logits(r, moe::row_matrix<float>::Zero(2, 3)); }, "z.cols()");
  CHECK(moe_test::route(r, moe::row_matrix<float>(0, 4)).num_tokens() == 0);
}

}  // namespace
