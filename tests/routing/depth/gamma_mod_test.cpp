// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/depth/gamma_mod.hpp: docs/routing-spec.md §13.3, errata 1 and 9.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <cstring>
#include <memory>
#include <random>
#include <algorithm>
#include <utility>
#include <vector>

#include <moe/moe.hpp>

#include "../../support/compare.hpp"
#include "../../support/layers.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;

namespace {
moe::row_matrix<float> golden_logits() {
  moe::row_matrix<float> z(6, 2);
  z << 0, 1, 1, 0, 0, 0.5f, 0, -1, 2, 0, 0, 0;
  return z;
}

std::shared_ptr<const moe::gamma_mod_router> any_router(index d = 2) {
  const moe::row_matrix<float> w = moe::row_matrix<float>::Ones(2, d);
  return std::make_shared<moe::gamma_mod_router>(w);
}

struct decided {
  std::vector<int> passes;
  std::vector<float> scale;
};

decided decide_z(const moe::gamma_mod& g, const moe::row_matrix<float>& z, const moe::route_context& ctx = {}) {
  moe::routing_plan plan;
  plan.reset(z.rows(), 1, 1);
  moe::workspace ws;
  ws.reset();
  g.decide_logits(moe::view(z), ctx, plan, ws);
  decided out;
  for (index t = 0; t < z.rows(); ++t) {
    out.passes.push_back(plan.passes(t));
    out.scale.push_back(plan.output_scale(t));
  }
  return out;
}
}  // namespace

TEST_CASE("gamma_mod: golden §13.3 (L = 6, L_ic = 4, C = 4)", "[gamma_mod][golden]") {
  const moe::gamma_mod g(any_router(), {.instruction_tokens = 4});
  CHECK(g.capacity(6) == 4);
  const auto d = decide_z(g, golden_logits());
  CHECK(d.passes == std::vector<int>{1, 0, 1, 0, 1, 1});  // I = [0, 2, 4, 5]
  CHECK(golden(d.scale[0], 0.731059));
  CHECK(golden(d.scale[2], 0.622459));
  CHECK(golden(d.scale[4], 0.119203));
  CHECK(golden(d.scale[5], 0.5));
  CHECK(d.scale[1] == 1.0f);  // skipped tokens keep the default scale
  // Prefill defaults to the training rule.
  const moe::gamma_mod prefill(any_router(), {.instruction_tokens = 4, .phase = moe::gamma_mod_phase::prefill});
  CHECK(decide_z(prefill, golden_logits()).passes == d.passes);
}

TEST_CASE("gamma_mod: capacity L - floor(L_ic/2) in double with the guard, L <= L_ic processes all", "[gamma_mod]") {
  auto cap = [](index lic, index L) { return moe::gamma_mod(any_router(), {.instruction_tokens = lic}).capacity(L); };
  CHECK(cap(6, 9) == 6);  // 9 (1 - 0.5 * 6/9) = 6.000000000000001 (errata 1)
  CHECK(cap(5, 8) == 6);
  CHECK(cap(0, 7) == 7);
  CHECK(cap(4, 4) == 4);
  CHECK(cap(10, 3) == 3);
  for (index lic = 0; lic < 40; ++lic) {
    for (index L = lic + 1; L < 80; ++L) {
      INFO("L_ic " << lic << " L " << L);
      CHECK(cap(lic, L) == L - lic / 2);
    }
  }
  CHECK(moe::gamma_mod(any_router(), {.instruction_tokens = 8, .skip_fraction = 1.0}).capacity(10) == 2);
  CHECK(moe::gamma_mod(any_router(), {.instruction_tokens = 8, .skip_fraction = 0.0}).capacity(10) == 10);
  // L <= L_ic: every token runs, scaled by p.
  const moe::gamma_mod g(any_router(), {.instruction_tokens = 6});
  const auto d = decide_z(g, golden_logits());
  CHECK(d.passes == std::vector<int>{1, 1, 1, 1, 1, 1});
  CHECK(golden(d.scale[1], 0.268941));
}

TEST_CASE("gamma_mod: masked routing forces question tokens, ties go to the lower position, per sequence",
          "[gamma_mod]") {
  // Question tokens 3 and 4 have a tiny p but are selected; the instruction tokens tie.
  moe::row_matrix<float> z(5, 2);
  z << 0, 0, 0, 0, 0, 0, 0, -9, 0, -9;
  const moe::gamma_mod g(any_router(), {.instruction_tokens = 3});  // C = 5 - 1 = 4
  CHECK(decide_z(g, z).passes == std::vector<int>{1, 1, 0, 1, 1});
  // Two sequences: L_ic counts from each sequence's start.
  moe::row_matrix<float> z2(11, 2);
  z2.topRows(6) = golden_logits();
  z2.bottomRows(5) = z;
  const std::vector<index> starts = {0, 6};
  const moe::gamma_mod g4(any_router(), {.instruction_tokens = 4});  // C = 4 and 5 - 2 = 3
  CHECK(decide_z(g4, z2, {.sequence_starts = starts}).passes == std::vector<int>{1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1});
  CHECK(decide_z(g4, moe::row_matrix<float>(0, 2)).passes.empty());
}

TEST_CASE("gamma_mod: decode p >= 0.5 (errata 9) and the prefill threshold p > t", "[gamma_mod]") {
  const moe::gamma_mod decode(any_router(), {.instruction_tokens = 4, .phase = moe::gamma_mod_phase::decode});
  const auto d = decide_z(decode, golden_logits());
  CHECK(d.passes == std::vector<int>{1, 0, 1, 0, 0, 1});  // token 5: p = 0.5 exactly is processed
  CHECK(golden(d.scale[0], 0.731059));
  const moe::gamma_mod strict(any_router(), {.phase = moe::gamma_mod_phase::decode, .decode_threshold = 0.7f});
  CHECK(decide_z(strict, golden_logits()).passes == std::vector<int>{1, 0, 0, 0, 0, 0});
  moe::row_matrix<float> z(3, 2);
  z << 0, -6, 0, -5, 0, 1;  // p = 0.00247, 0.00669, 0.731
  const moe::gamma_mod prefill(any_router(), {.instruction_tokens = 0, .phase = moe::gamma_mod_phase::prefill,
                                              .prefill_threshold = 0.005f});
  CHECK(decide_z(prefill, z).passes == std::vector<int>{0, 1, 1});
  moe::row_matrix<float> half(1, 2);
  half << 0, 0;
  const moe::gamma_mod prefill_half(any_router(), {.phase = moe::gamma_mod_phase::prefill, .prefill_threshold = 0.5f});
  CHECK(decide_z(prefill_half, half).passes == std::vector<int>{0});  // strict
}

TEST_CASE("gamma_mod: the decode and prefill rules are decided on the logits", "[gamma_mod]") {
  // p = sigmoid(z1 - z0) rounds to 0.5f for |z1 - z0| = 1e-9: p >= 0.5 would process both
  // tokens; on the logits z1 - z0 >= 0 processes only the second.
  moe::row_matrix<float> z(3, 2);
  z << 1e-9f, 0, 0, 1e-9f, 3, 3;
  const moe::gamma_mod decode(any_router(), {.phase = moe::gamma_mod_phase::decode});
  const auto d = decide_z(decode, z);
  CHECK(d.passes == std::vector<int>{0, 1, 1});
  CHECK(d.scale[1] == 0.5f);  // the scale is still p
  // p > 0.5 (prefill threshold 0.5) is z1 - z0 > 0.
  const moe::gamma_mod prefill(any_router(), {.phase = moe::gamma_mod_phase::prefill, .prefill_threshold = 0.5});
  CHECK(decide_z(prefill, z).passes == std::vector<int>{0, 1, 0});
  // A threshold t compares z1 - z0 with log(t / (1 - t)) in double: logit(0.7) = 0.8472979.
  moe::row_matrix<float> near(2, 2);
  near << 0, 0.847297f, 0, 0.847298f;
  const moe::gamma_mod strict(any_router(), {.phase = moe::gamma_mod_phase::decode, .decode_threshold = 0.7});
  CHECK(decide_z(strict, near).passes == std::vector<int>{0, 1});
  // Thresholds 0 and 1: every token, and only tokens whose p is exactly 1 (none with finite logits).
  const moe::gamma_mod all(any_router(), {.phase = moe::gamma_mod_phase::decode, .decode_threshold = 0.0});
  CHECK(decide_z(all, z).passes == std::vector<int>{1, 1, 1});
  const moe::gamma_mod none(any_router(), {.phase = moe::gamma_mod_phase::decode, .decode_threshold = 1.0});
  CHECK(decide_z(none, z).passes == std::vector<int>{0, 0, 0});
}

TEST_CASE("gamma_mod: one router shared by several layers", "[gamma_mod][layer]") {
  moe_test::rng rng(41);
  const index d = 16, E = 4, f = 8, T = 14;
  const auto rw = rng.matrix(2, d);
  auto shared = std::make_shared<const moe::gamma_mod_router>(rw);
  using router = moe::layer_skip<moe::top_k<>, moe::gamma_mod>;
  const auto w1 = moe_test::random_swiglu(rng, E, d, f), w2 = moe_test::random_swiglu(rng, E, d, f);
  const auto tw = rng.matrix(E, d);
  moe::layer<router, moe::swiglu_experts<float>, moe::device::cpu> a(
      router(moe::top_k<>(tw, {.k = 2}), moe::gamma_mod(shared, {.instruction_tokens = 8})), moe_test::make_bank(w1),
      moe::device::cpu{2});
  moe::layer<router, moe::swiglu_experts<float>, moe::device::cpu> b(
      router(moe::top_k<>(tw, {.k = 2}), moe::gamma_mod(shared, {.instruction_tokens = 8, .phase = moe::gamma_mod_phase::decode})),
      moe_test::make_bank(w2), moe::device::cpu{2});
  CHECK(shared.use_count() == 3);
  CHECK(a.router().depth().router().get() == b.router().depth().router().get());
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> ya(T, d), yb(T, d);
  a.forward(x, ya);
  b.forward(x, yb);
  // Both layers see the same p from the shared router: z = x · Wᵀ.
  std::vector<float> p(static_cast<std::size_t>(T));
  for (index t = 0; t < T; ++t) {
    float z0 = 0, z1 = 0;
    for (index i = 0; i < d; ++i) {
      z0 = std::fma(x(t, i), rw(0, i), z0);
      z1 = std::fma(x(t, i), rw(1, i), z1);
    }
    float q[2], zz[2] = {z0, z1};
    moe::kernels::softmax(zz, 2, q);
    p[t] = q[1];
  }
  moe::layer<moe::top_k<>, moe::swiglu_experts<float>, moe::device::serial> plain(moe::top_k<>(tw, {.k = 2}),
                                                                                  moe_test::make_bank(w1));
  moe::row_matrix<float> yp(T, d);
  plain.forward(x, yp);
  index kept = 0;
  for (index t = 0; t < T; ++t) {
    INFO("token " << t);
    CHECK(b.plan().passes(t) == (p[t] >= 0.5f ? 1 : 0));
    if (t >= 8) CHECK(a.plan().passes(t) == 1);
    kept += a.plan().passes(t);
    if (a.plan().passes(t) == 0) {
      CHECK(ya.row(t).isZero(0.0f));
    } else {
      const moe::row_matrix<float> want = yp.row(t) * p[t];
      CHECK(moe_test::bitwise_equal_rows(want, ya, t));
    }
  }
  CHECK(kept == 14 - 4);
  CHECK(a.policy_stats().kept_fraction == Approx(10.0 / 14));
}

TEST_CASE("gamma_mod: errors name the parameter", "[gamma_mod][error]") {
  moe::row_matrix<float> nan_w = moe::row_matrix<float>::Ones(2, 3);
  nan_w(1, 2) = NAN;
  CHECK_THROWS_WITH(moe::gamma_mod_router(nan_w), Catch::Contains("parameter 'weight(1, 2)'"));
  nan_w(1, 2) = -std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(moe::gamma_mod_router(nan_w), Catch::Contains("parameter 'weight(1, 2)'"));
  const moe::row_matrix<float> w3 = moe::row_matrix<float>::Ones(3, 2);
  CHECK_THROWS_WITH(moe::gamma_mod_router(w3), Catch::Contains("parameter 'weight.rows()'"));
  CHECK_THROWS_WITH(moe::gamma_mod(nullptr), Catch::Contains("parameter 'router'"));
  CHECK_THROWS_WITH(moe::gamma_mod(any_router(), {.instruction_tokens = -1}), Catch::Contains("parameter 'instruction_tokens'"));
  CHECK_THROWS_WITH(moe::gamma_mod(any_router(), {.skip_fraction = 1.5}), Catch::Contains("parameter 'skip_fraction'"));
  CHECK_THROWS_WITH(moe::gamma_mod(any_router(), {.prefill_threshold = NAN}), Catch::Contains("parameter 'prefill_threshold'"));
  CHECK_THROWS_WITH(moe::gamma_mod(any_router(), {.decode_threshold = 2.0f}), Catch::Contains("parameter 'decode_threshold'"));
  const moe::gamma_mod g(any_router(), {.instruction_tokens = 2});
  auto z = golden_logits();
  z(3, 1) = INFINITY;
  CHECK_THROWS_WITH(decide_z(g, z), Catch::Contains("parameter 'x' gives a non-finite router logit (token 3)"));
  moe::routing_plan plan;
  plan.reset(2, 1, 1);
  moe::workspace ws;
  ws.reset();
  const moe::row_matrix<float> x(2, 3);
  CHECK_THROWS_WITH(g.decide(moe::view(x), {}, plan, ws), Catch::Contains("parameter 'x.cols()' must be equal to 2, got 3"));
}

// docs/routing-spec.md §13.3: the question / response tokens are always selected. The paper's
// `p + 1` ties a question token whose logit gap is below ~-17 (p + 1 rounds to 1.0f) with an image
// token whose gap is above ~17 (p = 1.0f), and the lower position then wins: every forced token
// could be dropped. They rank ahead of every image token explicitly.
TEST_CASE("gamma_mod: forced question tokens are kept with saturated logits", "[gamma_mod][saturation]") {
  for (const index L : {index{10}, index{1062}}) {
    const index lic = L - 3;
    const moe::gamma_mod g(any_router(), {.instruction_tokens = lic});
    moe::row_matrix<float> z(L, 2);
    for (index t = 0; t < L; ++t) {
      const bool question = t >= lic;
      // Image tokens: p = 1.0f exactly; question tokens: p < 2^-24, so p + 1 == 1.0f.
      z(t, 0) = question ? 30.0f : 0.0f;
      z(t, 1) = question ? 0.0f : 30.0f;
    }
    moe::routing_plan probe;
    probe.reset(L, 1, 1);
    // The premise: in fp32 the paper's scores tie.
    float q[2];
    const float image_row[2] = {0.0f, 30.0f}, question_row[2] = {30.0f, 0.0f};
    moe::kernels::softmax(image_row, 2, q);
    REQUIRE(q[1] == 1.0f);
    moe::kernels::softmax(question_row, 2, q);
    REQUIRE(q[1] + 1.0f == 1.0f);
    const auto d = decide_z(g, z);
    const index C = g.capacity(L);
    index kept = 0;
    for (index t = 0; t < L; ++t) kept += d.passes[static_cast<std::size_t>(t)];
    CHECK(kept == C);
    for (index t = lic; t < L; ++t) CHECK(d.passes[static_cast<std::size_t>(t)] == 1);
    // The remaining places go to the image tokens in ascending position (all tie at p = 1).
    for (index t = 0; t < lic; ++t) CHECK(d.passes[static_cast<std::size_t>(t)] == (t < C - 3 ? 1 : 0));
  }
}

TEST_CASE("gamma_mod: forced tokens win over every image token, whatever the logits", "[gamma_mod][saturation]") {
  // Random logits of every magnitude up to the saturation of exp: the forced tokens are a
  // subset of the kept ones in every sequence, and the image tokens kept are the best by p.
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> gap(-100.0f, 100.0f);
  for (int rep = 0; rep < 50; ++rep) {
    const index L = 5 + rep, lic = rep % (L + 1);
    const moe::gamma_mod g(any_router(), {.instruction_tokens = lic, .skip_fraction = (rep % 4) / 3.0});
    moe::row_matrix<float> z(L, 2);
    for (index t = 0; t < L; ++t) {
      z(t, 0) = 0.0f;
      z(t, 1) = gap(rng) * static_cast<float>(rep % 3 == 0 ? 1 : 0.1);
    }
    const auto d = decide_z(g, z);
    const index C = g.capacity(L);
    if (L <= lic) {
      for (index t = 0; t < L; ++t) CHECK(d.passes[static_cast<std::size_t>(t)] == 1);
      continue;
    }
    for (index t = lic; t < L; ++t) CHECK(d.passes[static_cast<std::size_t>(t)] == 1);
    // Image tokens: the C - (L - lic) largest p, ties to the lower position (naive ranking).
    std::vector<std::pair<float, index>> image;
    for (index t = 0; t < lic; ++t) {
      float q[2];
      const float row[2] = {z(t, 0), z(t, 1)};
      moe::kernels::softmax(row, 2, q);
      image.emplace_back(q[1], t);
    }
    std::stable_sort(image.begin(), image.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    const auto places = static_cast<std::size_t>(C - (L - lic));
    for (std::size_t i = 0; i < image.size(); ++i) {
      CHECK(d.passes[static_cast<std::size_t>(image[i].second)] == (i < places ? 1 : 0));
    }
  }
}

}  // namespace
