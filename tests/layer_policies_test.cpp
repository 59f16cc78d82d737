// SPDX-License-Identifier: Apache-2.0
// moe::layer with each token-choice policy family (null experts, similarity-aware, prototypical
// with shared and unconditional experts, DynMoLE, BlockFFN) against a naive reference layer, over
// the devices of support/devices.hpp (mpi under mpirun in moe_mpi_tests).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <moe/moe.hpp>

#include "support/devices.hpp"
#include "support/layers.hpp"
#include "support/naive.hpp"
#include "support/naive_policies.hpp"
#include "support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using bank = moe::swiglu_experts<float>;
using moe_test::make_layer;

void add_route(const moe_test::naive_swiglu& experts, const moe_test::naive_route& r, const float* x, double* y) {
  for (std::size_t s = 0; s < r.experts.size(); ++s) {
    if (r.experts[s] >= 0) experts.accumulate(r.experts[s], x, r.weights[s], y);
  }
}

TEMPLATE_LIST_TEST_CASE("layer with null experts: naive reference, all-null tokens give exactly 0",
                        "[layer][null_experts]", moe_test::devices) {
  moe_test::rng rng(1301);
  const index E = 8, m = 4, k = 3, d = 24, f = 16, T = 33;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  // Three null rows aligned with token 0 so that its top-3 are all null experts.
  auto w_null = rng.matrix(m, d);
  for (index j = 0; j < 3; ++j) w_null.row(j) = 40.0f * x.row(0) / x.row(0).squaredNorm();
  using policy = moe::null_experts<moe::top_k<>>;
  auto layer = make_layer<TestType>(policy(w, w_null, {.k = k, .renormalize = true}), experts);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  moe::row_matrix<float> all(E + m, d);
  all << w, w_null;
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  for (index t = 0; t < T; ++t) {
    add_route(experts, moe_test::naive_null_route(moe_test::naive_logits(all, x.data() + t * d), E, k),
              x.data() + t * d, want.data() + t * d);
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  CHECK(layer.plan().active_slots(0) == 0);
  for (index i = 0; i < d; ++i) CHECK(y(0, i) == 0.0f);  // all-null: exactly 0
  const auto s = layer.policy_stats();
  CHECK(s.tokens_without_expert >= 1);
  CHECK(s.mean_true_experts == Approx(layer.stats().mean_experts_per_token));
  CHECK(s.flops_saved == Approx(1.0 - s.mean_true_experts / k));
}

TEMPLATE_LIST_TEST_CASE("layer with similarity-aware routing: naive reference per sequence",
                        "[layer][similarity_aware]", moe_test::devices) {
  moe_test::rng rng(1302);
  const index E = 8, d = 16, f = 12;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d, 2.0f);
  const auto x = rng.matrix(33, d);
  const std::vector<index> starts = {0, 20};
  using policy = moe::similarity_aware<moe::top_k<>>;
  for (const bool causal : {true, false}) {
    auto layer = make_layer<TestType>(
        policy(moe::top_k<>(w, {.k = 2, .renormalize = true}), {.causal = causal}, moe::scaled_dot_similarity(1.5f)),
        experts);
    moe::row_matrix<float> y(33, d);
    layer.forward(x, y, {.sequence_starts = starts});
    std::vector<double> want(static_cast<std::size_t>(33 * d), 0.0);
    for (const auto& [s0, L] : std::vector<std::pair<index, index>>{{0, 20}, {20, 13}}) {
      const moe::row_matrix<float> xs = x.middleRows(s0, L);
      const auto routes = moe_test::naive_similarity(w, xs, 2, causal, false, false, 1.5);
      for (index i = 0; i < L; ++i) add_route(experts, routes[i], x.data() + (s0 + i) * d, want.data() + (s0 + i) * d);
    }
    INFO("causal " << causal);
    CHECK(moe_test::relative_error(y, want) < 1e-5);
    const auto s = layer.policy_stats();
    CHECK(s.mean_experts_per_token == 2.0);
    CHECK(s.routing_entropy > 0.0);
  }
}

TEMPLATE_LIST_TEST_CASE("layer with prototypical routing, a shared expert and an unconditional expert",
                        "[layer][prototypical]", moe_test::devices) {
  moe_test::rng rng(1303);
  const index N = 4, d = 20, f = 12, T = 30;
  const auto experts = moe_test::random_swiglu(rng, N + 1, d, f);  // 4 routed + 1 unconditional
  const auto shared = moe_test::random_swiglu(rng, 1, d, 2 * f);
  const auto P = rng.matrix(N, d);
  const auto x = rng.matrix(T, d);
  std::vector<std::uint8_t> cond(T, 1);
  for (index t = 0; t < T; t += 4) cond[t] = 0;
  for (const auto act : {moe::prototype_activation::identity, moe::prototype_activation::softmax}) {
    auto layer = make_layer<TestType>(moe::prototypical(P, {.k = 2, .activation = act}), experts,
                                      moe::shared_experts<bank>(moe_test::make_bank(shared)));
    moe::row_matrix<float> y(T, d);
    layer.forward(x, y, {.conditional = cond});
    std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
    for (index t = 0; t < T; ++t) {
      const float* xt = x.data() + t * d;
      shared.accumulate(0, xt, 1.0, want.data() + t * d);
      if (cond[t]) {
        add_route(experts,
                  moe_test::naive_prototypical(P, xt, 2, 1.0, act == moe::prototype_activation::identity ? 0 : 2), xt,
                  want.data() + t * d);
      } else {
        experts.accumulate(N, xt, 1.0, want.data() + t * d);
      }
    }
    CHECK(moe_test::relative_error(y, want) < 1e-5);
    CHECK(layer.policy_stats().unconditional_tokens == 8);
  }
}

TEMPLATE_LIST_TEST_CASE("layer with DynMoLE routing: naive reference", "[layer][dynmole]", moe_test::devices) {
  moe_test::rng rng(1304);
  const index E = 6, d = 16, f = 10, T = 40;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d, 2.0f);
  auto x = rng.matrix(T, d);
  for (index t = 0; t < T; t += 4) x.row(t) *= 0.01f;  // near-uniform routing: the entropy broadcast
  auto layer = make_layer<TestType>(moe::dynmole(w), experts);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  index active = 0, all = 0;
  for (index t = 0; t < T; ++t) {
    const auto z = moe_test::naive_logits(w, x.data() + t * d);
    const auto route =
        moe_test::naive_dynmole(z, static_cast<double>(1.1f), static_cast<double>(0.75f), 2, static_cast<double>(0.9f));
    add_route(experts, route, x.data() + t * d, want.data() + t * d);
    active += static_cast<index>(route.experts.size());
    all += static_cast<index>(route.experts.size()) == E;
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  // The statistics are those of the naive routes (this batch has both kinds of token).
  const auto s = layer.policy_stats();
  CHECK(s.tokens == T);
  CHECK(s.mean_experts_per_token == static_cast<double>(active) / static_cast<double>(T));
  CHECK(s.all_experts_fraction == static_cast<double>(all) / static_cast<double>(T));
  CHECK(all > 0);
  CHECK(all < T);
}

TEMPLATE_LIST_TEST_CASE("layer with the BlockFFN router: naive reference", "[layer][blockffn]", moe_test::devices) {
  moe_test::rng rng(1305);
  const index E = 12, d = 16, f = 8, T = 40;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  std::vector<float> gain(E);
  for (auto& g : gain) g = rng.uniform(0.5f, 1.5f);
  auto layer = make_layer<TestType>(moe::blockffn(w, {.gain = gain, .chunk_length = 8}), experts);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  std::vector<moe_test::naive_route> routes;
  for (index t = 0; t < T; ++t) {
    routes.push_back(moe_test::naive_blockffn(moe_test::naive_logits(w, x.data() + t * d), gain));
    add_route(experts, routes.back(), x.data() + t * d, want.data() + t * d);
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  // Token- and chunk-level sparsity of the naive routes (chunks of 8 tokens).
  index active = 0;
  for (const auto& r : routes) active += static_cast<index>(r.experts.size());
  double used = 0;
  for (index c0 = 0; c0 < T; c0 += 8) {
    std::vector<bool> in_chunk(static_cast<std::size_t>(E), false);
    for (index t = c0; t < std::min<index>(c0 + 8, T); ++t) {
      for (const auto e : routes[static_cast<std::size_t>(t)].experts) in_chunk[static_cast<std::size_t>(e)] = true;
    }
    used += static_cast<double>(std::count(in_chunk.begin(), in_chunk.end(), true)) / static_cast<double>(E);
  }
  const auto s = layer.policy_stats();
  CHECK(s.mean_experts_per_token == static_cast<double>(active) / static_cast<double>(T));
  CHECK(s.token_sparsity == Approx(1.0 - static_cast<double>(active) / static_cast<double>(T * E)).epsilon(1e-12));
  CHECK(s.chunk_sparsity == Approx(1.0 - used / 5.0).epsilon(1e-12));
  CHECK(s.chunk_length == 8);
}

// Top-k of `p` (ties: lower index), in double.
std::vector<index> naive_top(const std::vector<double>& p, index k) {
  std::vector<index> order(p.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = static_cast<index>(i);
  std::stable_sort(order.begin(), order.end(), [&](index a, index b) { return p[static_cast<std::size_t>(a)] > p[static_cast<std::size_t>(b)]; });
  order.resize(static_cast<std::size_t>(k));
  return order;
}

TEMPLATE_LIST_TEST_CASE("layer with identity experts (LongCat-Flash): chosen identities add w x", "[layer][identity_experts]",
                        moe_test::devices) {
  moe_test::rng rng(1311);
  const index E = 6, m = 3, k = 3, d = 20, f = 12, T = 29;
  const float scale = 2.0f;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto x = rng.matrix(T, d);
  auto w = rng.matrix(E + m, d);
  // Token 0 prefers the identity experts 6 and 7 (router rows aligned with it).
  for (const index j : {E, E + 1}) w.row(j) = 30.0f * x.row(0) / x.row(0).squaredNorm();
  using policy = moe::identity_experts<moe::top_k<>>;
  auto layer = make_layer<TestType>(policy(moe::top_k<>(w, {.k = k, .route_scale = scale}), m), experts);
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  index identity_tokens = 0;
  for (index t = 0; t < T; ++t) {
    const auto z = moe_test::naive_logits(w, x.data() + t * d);
    const double mx = *std::max_element(z.begin(), z.end());
    std::vector<double> p(z.size());
    double sum = 0;
    for (std::size_t i = 0; i < z.size(); ++i) sum += p[i] = std::exp(z[i] - mx);
    for (auto& v : p) v /= sum;
    bool any = false;
    for (const index e : naive_top(p, k)) {
      const double wt = scale * p[static_cast<std::size_t>(e)];
      if (e < E) {
        experts.accumulate(e, x.data() + t * d, wt, want.data() + t * d);
      } else {
        any = true;
        for (index i = 0; i < d; ++i) want[static_cast<std::size_t>(t * d + i)] += wt * x(t, i);
      }
    }
    identity_tokens += any;
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  CHECK(identity_tokens >= 1);
  CHECK(layer.plan().num_experts() == E);
  CHECK(layer.plan().identity_weight(0) > 0.0f);
  CHECK(layer.plan().active_slots(0) == 1);  // two of its three slots are identities
  // A whole-batch base (capacity that drops nothing: the largest load): the same output, and on
  // mpi each rank's slice of the plan keeps its identity weights.
  using whole = moe::identity_experts<moe::capacity<moe::top_k<>>>;
  auto wl = make_layer<TestType>(whole(moe::capacity<moe::top_k<>>(moe::top_k<>(w, {.k = k, .route_scale = scale}), {.drop_tokens = false}), m),
                                 experts);
  moe::row_matrix<float> yw(T, d);
  wl.forward(x, yw);
  CHECK(moe_test::relative_error(yw, want) < 1e-5);
}

TEMPLATE_LIST_TEST_CASE("layer with weights on the expert input (Llama 4): Expert(w x), combined with weight 1",
                        "[layer][weigh_input]", moe_test::devices) {
  moe_test::rng rng(1312);
  const index E = 8, d = 24, f = 16, T = 31;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  for (const int k : {1, 2}) {
    // Llama4TextMoe: top-k of the router logits, sigmoid of the selected logits, the states
    // scaled by those scores before the experts (transformers' modeling_llama4.py).
    using policy = moe::weigh_input<moe::top_k<moe::sigmoid_gate>>;
    auto layer = make_layer<TestType>(policy(moe::top_k<moe::sigmoid_gate>(w, {.k = k})), experts);
    moe::row_matrix<float> y(T, d);
    layer.forward(x, y);
    CHECK(layer.plan().input_weighted());
    std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
    for (index t = 0; t < T; ++t) {
      const auto z = moe_test::naive_logits(w, x.data() + t * d);
      std::vector<double> zd(z.begin(), z.end());
      for (const index e : naive_top(zd, k)) {
        const double s = 1.0 / (1.0 + std::exp(-zd[static_cast<std::size_t>(e)]));
        std::vector<float> xs(static_cast<std::size_t>(d));
        for (index i = 0; i < d; ++i) xs[static_cast<std::size_t>(i)] = static_cast<float>(s * x(t, i));
        experts.accumulate(e, xs.data(), 1.0, want.data() + t * d);
      }
    }
    CHECK(moe_test::relative_error(y, want) < 1e-5);
    // A whole-batch base: the flag survives mpi's slicing of the plan.
    using whole = moe::weigh_input<moe::capacity<moe::top_k<moe::sigmoid_gate>>>;
    auto wl = make_layer<TestType>(whole(moe::capacity<moe::top_k<moe::sigmoid_gate>>(moe::top_k<moe::sigmoid_gate>(w, {.k = k}),
                                                                                      {.drop_tokens = false})),
                                   experts);
    moe::row_matrix<float> yw(T, d);
    wl.forward(x, yw);
    CHECK(moe_test::relative_error(yw, want) < 1e-5);
    // Not the output-weighted layer: the experts are nonlinear in their input.
    auto plain = make_layer<TestType>(moe::top_k<moe::sigmoid_gate>(w, {.k = k}), experts);
    moe::row_matrix<float> yo(T, d);
    plain.forward(x, yo);
    CHECK(moe_test::relative_error(yo, want) > 1e-3);
  }
}

}  // namespace
