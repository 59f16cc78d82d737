// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/presets.hpp: each preset reproduces its model's routing on a hand-computed
// example.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <moe/device/serial.hpp>
#include <moe/layer.hpp>
#include <moe/losses/load_balance.hpp>
#include <moe/presets.hpp>

#include "support/layers.hpp"
#include "support/naive.hpp"
#include "support/random.hpp"
#include "support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe_test::route_logits;

namespace {
moe::row_matrix<float> identity(index E) {
  moe::row_matrix<float> w(E, E);
  w.setIdentity();
  return w;
}

// One token's logits: 0 everywhere except the given (expert, logit) pairs.
moe::row_matrix<float> one_token(index E, std::vector<std::pair<index, float>> hot) {
  moe::row_matrix<float> z = moe::row_matrix<float>::Zero(1, E);
  for (auto [e, v] : hot) z(0, e) = v;
  return z;
}
}  // namespace

TEST_CASE("preset mixtral: softmax top-2 of 8, renormalised", "[presets]") {
  const auto w = identity(moe::presets::mixtral::num_experts);
  const auto r = moe::presets::mixtral::make(w);
  const auto plan = route_logits(r, one_token(8, {{5, 2.0f}, {2, 1.0f}}));
  // Renormalised pair: e² / (e² + e) = sigmoid(1).
  CHECK(plan.expert(0, 0) == 5);
  CHECK(plan.expert(0, 1) == 2);
  CHECK(golden(plan.weight(0, 0), 0.731059));
  CHECK(golden(plan.weight(0, 1), 0.268941));
}

TEST_CASE("preset qwen2_moe: softmax top-4 of 60, norm_topk_prob, sigmoid-gated shared expert", "[presets]") {
  constexpr index E = moe::presets::qwen2_moe::num_experts;
  const auto w = identity(E);
  const auto z = one_token(E, {{5, 3.0f}, {17, 2.0f}, {42, 2.0f}, {59, 1.0f}});
  const double e = std::exp(1.0), denom = 56 + e * e * e + 2 * e * e + e;
  const double want[4] = {e * e * e / denom, e * e / denom, e * e / denom, e / denom};
  const auto raw = route_logits(moe::presets::qwen2_moe::make(w), z);  // norm_topk_prob = false
  const int experts[4] = {5, 17, 42, 59};
  for (index s = 0; s < 4; ++s) {
    CHECK(raw.expert(0, s) == experts[s]);
    CHECK(golden(raw.weight(0, s), want[s]));
  }
  const auto norm = route_logits(moe::presets::qwen2_moe::make(w, true), z);
  const double sum = want[0] + want[1] + want[2] + want[3];
  for (index s = 0; s < 4; ++s) CHECK(golden(norm.weight(0, s), want[s] / sum));

  // The layer: routed experts plus sigmoid(gate · x) times the shared expert.
  moe_test::rng rng(1001);
  const index d = 8, f = 4, T = 5;
  const auto bank = moe_test::random_swiglu(rng, E, d, f);
  const auto shared_w = moe_test::random_swiglu(rng, 1, d, 12);
  const auto router_w = rng.matrix(E, d);
  std::vector<float> gate(static_cast<std::size_t>(d));
  for (auto& g : gate) g = rng.uniform();
  moe::layer<moe::presets::qwen2_moe::router, moe::swiglu_experts<float>, moe::device::serial> layer(
      moe::presets::qwen2_moe::make(router_w), moe_test::make_bank(bank),
      moe::presets::qwen2_moe::shared(moe_test::make_bank(shared_w), gate));
  const auto x = rng.matrix(T, d);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  auto ref = moe_test::naive_layer(router_w, bank, x, 4, false);
  for (index t = 0; t < T; ++t) {
    double logit = 0;
    for (index i = 0; i < d; ++i) logit += static_cast<double>(gate[static_cast<std::size_t>(i)]) * x(t, i);
    shared_w.accumulate(0, x.data() + t * d, 1.0 / (1.0 + std::exp(-logit)), ref.data() + t * d);
  }
  CHECK(moe_test::relative_error(y, ref) < 1e-5);
}

TEST_CASE("preset olmoe: softmax top-8 of 64, not renormalised", "[presets]") {
  const auto w = identity(moe::presets::olmoe::num_experts);
  std::vector<std::pair<index, float>> hot;
  for (index e : {3, 9, 10, 20, 33, 41, 50, 63, 7}) hot.emplace_back(e, 1.0f);  // nine tied experts
  const auto plan = route_logits(moe::presets::olmoe::make(w), one_token(64, hot));
  const double e = std::exp(1.0), p = e / (9 * e + 55);
  const int want[8] = {3, 7, 9, 10, 20, 33, 41, 50};  // ties: lower index; expert 63 misses out
  for (index s = 0; s < 8; ++s) {
    CHECK(plan.expert(0, s) == want[s]);
    CHECK(golden(plan.weight(0, s), p));
  }
  CHECK(moe::presets::olmoe::load_balance().alpha == 0.01);
  CHECK(moe::presets::olmoe::z_loss == 1e-3);
}

TEST_CASE("preset deepseek_v3: 8 groups, 4 kept, top-8, scale 2.5, -inf masking with negative biases",
          "[presets][group_limited]") {
  constexpr index E = moe::presets::deepseek_v3::num_experts;
  const auto w = identity(E);
  // Negative biases everywhere: every biased score s + b is below 0.
  const auto r = moe::presets::deepseek_v3::make(w, std::vector<float>(E, -1.0f));
  CHECK(r.max_slots() == 8);
  CHECK(r.group_size() == 32);
  // Odd groups have logits 2 + 0.01·(e mod 32), even groups -2 + 0.01·(e mod 32): groups 1, 3, 5, 7 win.
  moe::row_matrix<float> z(1, E);
  for (index e = 0; e < E; ++e) z(0, e) = ((e / 32) % 2 ? 2.0f : -2.0f) + 0.01f * static_cast<float>(e % 32);
  const auto plan = route_logits(r, z);
  // The 8 best of the kept groups: position 31 of each odd group, then position 30.
  const int want[8] = {63, 127, 191, 255, 62, 126, 190, 254};
  const double s31 = moe_test::naive_sigmoid(static_cast<double>(2.0f + 0.31f)),
               s30 = moe_test::naive_sigmoid(static_cast<double>(2.0f + 0.30f));
  for (index s = 0; s < 8; ++s) {
    CHECK(plan.expert(0, s) == want[s]);
    CHECK(golden(plan.weight(0, s), 2.5 * (s < 4 ? s31 : s30) / (4 * s31 + 4 * s30)));
  }
  // With the Hugging Face 0.0 mask, the masked experts (key 0.0) would beat every kept expert
  // (key < 0): the 8 selected would be experts 0..7 of the losing group 0. Show that this is
  // what such a mask selects, so the assertion above is the -inf behaviour.
  std::vector<float> hf_keys(E);
  for (index e = 0; e < E; ++e) {
    const bool kept = (e / 32) % 2 == 1;
    hf_keys[e] = kept ? static_cast<float>(moe_test::naive_sigmoid(z(0, e)) - 1.0) : 0.0f;
  }
  const auto hf = moe_test::brute_force_top_k(hf_keys, 8);
  CHECK(hf == std::vector<std::int32_t>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(moe::presets::deepseek_v3::sequence_balance().alpha == 1e-4);
  CHECK(moe::presets::deepseek_v3::bias_update_speed == 0.001f);
}

TEST_CASE("preset jamba: softmax top-2 of 16, not renormalised", "[presets]") {
  const auto w = identity(moe::presets::jamba::num_experts);
  const auto plan = route_logits(moe::presets::jamba::make(w), one_token(16, {{3, 2.0f}, {9, 1.0f}}));
  const double e = std::exp(1.0), denom = e * e + e + 14;
  CHECK(plan.expert(0, 0) == 3);
  CHECK(plan.expert(0, 1) == 9);
  CHECK(golden(plan.weight(0, 0), e * e / denom));
  CHECK(golden(plan.weight(0, 1), e / denom));
}

TEST_CASE("preset switch_transformer: top-1 with capacity", "[presets][capacity]") {
  // E = 4, T = 8, capacity factor 1.25: C = ceil(1.25 · 8 / 4) = 3.
  const auto w = identity(4);
  const auto r = moe::presets::switch_transformer::make(w);
  CHECK(r.expert_capacity(8) == 3);
  moe::row_matrix<float> z(8, 4);
  z << 1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0,  // five tokens want expert 0
      0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1;
  const auto plan = route_logits(r, z);
  const int want[8] = {0, 0, 0, moe::no_expert, moe::no_expert, 1, 2, 3};
  const double e = std::exp(1.0);
  for (index t = 0; t < 8; ++t) {
    INFO("token " << t);
    CHECK(plan.expert(t, 0) == want[t]);
  }
  CHECK(golden(plan.weight(0, 0), e / (e + 3)));  // the raw probability, as in Switch
  CHECK(golden(plan.weight(1, 0), e * e / (e * e + 3)));
  CHECK(plan.dropped() == 2);
  // Switch loss on the pre-drop argmax: f = [5/8, 1/8, 1/8, 1/8]; P_1 = P_2 = P_3 by symmetry.
  const double a = 1 / (e + 3), b = 1 / (e * e + 3), c = 1 / (e * e * e + 3);
  const double P0 = (3 * e * a + e * e * b + e * e * e * c + 3 * a) / 8;
  const double P1 = (5 * a + b + c + e * a) / 8;
  CHECK(golden(moe::switch_load_balance_loss(z, moe::presets::switch_transformer::load_balance_alpha),
               0.01 * 4 * (5.0 / 8 * P0 + 3.0 / 8 * P1)));
}

TEST_CASE("preset dit_moe: the golden of spec §12", "[presets][golden]") {
  moe::row_matrix<float> w(4, 2);
  w << 1, 0, 0, 1, -1, 0.5f, 0.5f, 0.5f;
  moe::row_matrix<float> x(3, 2);
  x << 1, 0, 0, 1, 1, 1;
  // The §12 golden has 4 experts, not DiT-MoE's 8 or 16: the preset's options on a plain router.
  const moe::presets::dit_moe::router r(w, moe::presets::dit_moe::options());
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  r.route(moe::view(std::as_const(x)), {}, plan, ws);
  const int experts[3][2] = {{0, 3}, {1, 2}, {0, 1}};
  const double weights[3][2] = {{0.473991, 0.287490}, {0.387456, 0.235004}, {0.310257, 0.310257}};
  for (index t = 0; t < 3; ++t) {
    for (index s = 0; s < 2; ++s) {
      CHECK(plan.expert(t, s) == experts[t][s]);
      CHECK(golden(plan.weight(t, s), weights[t][s]));
    }
  }
  moe::row_matrix<float> z(3, 4);
  z << 1, 0, -1, 0.5f, 0, 1, 0.5f, 0.5f, 1, 1, -0.5f, 1;
  CHECK(golden(moe::expert_balance_loss(z, plan, moe::presets::dit_moe::balance_alpha), 0.010664));
  CHECK(moe::presets::dit_moe::num_shared_experts == 2);
}

TEST_CASE("presets: make() checks the weight against the model's number of experts", "[presets][error]") {
  const auto throws = [](auto&& make, const std::string& preset, const std::string& param) {
    try {
      (void)make();
      FAIL("expected moe::error from " << preset);
    } catch (const moe::error& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find("moe::presets::" + preset + "::make: parameter '" + param + "'") != std::string::npos);
    }
  };
  const auto w = [](index rows, index cols = 4) { return moe::row_matrix<float>::Ones(rows, cols).eval(); };
  throws([&] { return moe::presets::mixtral::make(w(7)); }, "mixtral", "weight.rows()");
  throws([&] { return moe::presets::mixtral::make(w(8, 0)); }, "mixtral", "weight.cols()");
  throws([&] { return moe::presets::qwen2_moe::make(w(64)); }, "qwen2_moe", "weight.rows()");
  throws([&] { return moe::presets::olmoe::make(w(8)); }, "olmoe", "weight.rows()");
  throws([&] { return moe::presets::deepseek_v3::make(w(64)); }, "deepseek_v3", "weight.rows()");
  throws([&] { return moe::presets::jamba::make(w(8)); }, "jamba", "weight.rows()");
  throws([&] { return moe::presets::dit_moe::make(w(4)); }, "dit_moe", "weight.rows()");
  throws([&] { return moe::presets::switch_transformer::make(w(4, 0)); }, "switch_transformer", "weight.cols()");
  // The right shapes build.
  CHECK(moe::presets::mixtral::make(w(8)).num_experts() == 8);
  CHECK(moe::presets::dit_moe::make(w(8)).num_experts() == 8);
  CHECK(moe::presets::dit_moe::make(w(16)).num_experts() == 16);
  CHECK(moe::presets::deepseek_v3::make(w(256)).num_experts() == 256);
  CHECK(moe::presets::switch_transformer::make(w(5)).num_experts() == 5);  // any number of experts
}

}  // namespace
