// SPDX-License-Identifier: Apache-2.0
// Composition of token-choice policies through the stage protocol of routing/routers/token_choice.hpp:
// wrappers over wrappers, and a policy written outside the library.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <moe/moe.hpp>

#include "../support/layers.hpp"
#include "../support/naive.hpp"
#include "../support/naive_policies.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_slots;

// A policy written outside the library: hard top-1 (the argmax of the logits, weight 1). It
// models moe::token_choice_policy, so it plugs into moe::layer and into the library's wrappers.
class hard_top1 {
 public:
  using router_type = hard_top1;
  explicit hard_top1(moe::row_matrix<float> w) : m_w(std::move(w)) {}

  index num_experts() const noexcept { return m_w.rows(); }
  index hidden() const noexcept { return m_w.cols(); }
  index max_slots() const noexcept { return 1; }
  void route(moe::const_matrix_map<float> x, const moe::route_context&, moe::routing_plan& plan,
             moe::workspace& ws) const {
    moe::route_by_stages(*this, x, plan, ws, "hard_top1::route");
  }

  // Stages.
  index columns() const noexcept { return m_w.rows(); }
  void logits(moe::const_matrix_map<float> x, float* z, index ldz, moe::workspace&) const {
    for (index t = 0; t < x.rows(); ++t) {
      const auto zt = moe_test::naive_logits(m_w, x.data() + t * x.outerStride());
      std::copy(zt.begin(), zt.end(), z + t * ldz);
    }
  }
  void prepare_row(float*, index, index) const noexcept {}
  bool gate_row(const float* z, float* s) const noexcept { return moe::kernels::softmax(z, columns(), s); }
  float row_entropy(const float* s, float*) const noexcept { return moe::kernels::entropy(s, columns()); }
  index select_row(const float* z, const float*, std::int32_t* idx, float*) const noexcept {
    return moe::kernels::top_k(z, columns(), 1, idx);
  }
  void weigh_row(float*, const std::int32_t*, index count, float* w) const noexcept {
    for (index s = 0; s < count; ++s) w[s] = 1.0f;
  }
  std::int32_t column_expert(index c) const noexcept { return static_cast<std::int32_t>(c); }

 private:
  moe::row_matrix<float> m_w;  // [E × d]
};
static_assert(moe::router<hard_top1>);
static_assert(moe::token_choice_policy<hard_top1>);
static_assert(moe::token_choice_policy<moe::null_experts<hard_top1>>);
static_assert(moe::router<moe::similarity_aware<moe::null_experts<moe::top_k<>>>>);

TEST_CASE("composition: a policy written outside the library runs in moe::layer", "[routing][composition][layer]") {
  moe_test::rng rng(1201);
  const index E = 6, d = 20, f = 12, T = 25;
  const auto experts = moe_test::random_swiglu(rng, E, d, f);
  const auto w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  moe::layer<hard_top1, moe::swiglu_experts<float>, moe::device::cpu> layer(hard_top1(w), moe_test::make_bank(experts),
                                                                           moe::device::cpu{2});
  moe::row_matrix<float> y(T, d);
  layer.forward(x, y);
  std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
  for (index t = 0; t < T; ++t) {
    const auto z = moe_test::naive_logits(w, x.data() + t * d);
    experts.accumulate(moe_test::brute_force_top_k(z, 1)[0], x.data() + t * d, 1.0, want.data() + t * d);
  }
  CHECK(moe_test::relative_error(y, want) < 1e-5);
  CHECK(layer.stats().mean_experts_per_token == 1.0);
}

TEST_CASE("composition: library wrappers over the outside policy", "[routing][composition]") {
  // null_experts<hard_top1>: columns 0..1 true, 2..3 null; logits x = z through an identity.
  const moe::null_experts<hard_top1> nulls(hard_top1(moe_test::eye(4)), 2);
  CHECK(nulls.num_experts() == 2);
  const auto x = moe_test::fmatrix({{2, 1, 0, 0}, {-1, 0, 1, 3}});
  const auto plan = moe_test::route(nulls, x);
  check_slots(plan, 0, {0}, {1.0});
  check_slots(plan, 1, {moe::no_expert}, {0.0});  // the argmax is a null expert
  // similarity_aware<hard_top1> with attention: token 1 mixes π_0 and π_1 half and half.
  const moe::similarity_aware<hard_top1> mixed(hard_top1(moe_test::eye(4)),
                                               {.source = moe::similarity_source::attention});
  const std::vector<float> att = {1, 0, 0.5f, 0.5f};
  const auto pm = moe_test::route(mixed, x, {.attention = att});
  // π_0 = softmax([2,1,0,0]), π_1 = softmax([-1,0,1,3]): q_1 argmax is 3 (0.4·... vs 0.3·...).
  const auto p0 = moe_test::naive_softmax({2, 1, 0, 0}), p1 = moe_test::naive_softmax({-1, 0, 1, 3});
  std::vector<float> q(4);
  for (int e = 0; e < 4; ++e) q[e] = static_cast<float>(0.5 * p0[e] + 0.5 * p1[e]);
  check_slots(pm, 0, {0}, {1.0});
  check_slots(pm, 1, {moe_test::brute_force_top_k(q, 1)[0]}, {1.0});
}

TEST_CASE("composition: similarity_aware<null_experts<top_k>> against a hand computation",
          "[routing][composition][golden]") {
  // E = 2 true + m = 2 null columns, k = 2; the §7 logits of tokens 0 and 2; token 1 attends
  // half to token 0 and half to itself.
  using policy = moe::similarity_aware<moe::null_experts<moe::top_k<>>>;
  const auto wt = moe_test::fmatrix({{1, 0, 0, 0}, {0, 1, 0, 0}});
  const auto wn = moe_test::fmatrix({{0, 0, 1, 0}, {0, 0, 0, 1}});
  const auto x = moe_test::fmatrix({{2, 1, 0, 0}, {-1, 0, 1, 1}});
  const std::vector<float> att = {1, 0, 0.5f, 0.5f};
  const policy r(moe::null_experts<moe::top_k<>>(wt, wn, {.k = 2, .renormalize = true}),
                 {.source = moe::similarity_source::attention});
  CHECK(r.num_experts() == 2);
  const auto plan = moe_test::route(r, x, {.attention = att});
  // Token 0 attends to itself: AdaMoE's golden route.
  check_slots(plan, 0, {0, 1}, {0.731059, 0.268941});
  // Token 1 alone is all-null (§7 z_2). Mixed: q = (π_0 + π_1) / 2 over the 4 columns
  //   = ([0.610296,0.224515,0.082595,0.082595] + [0.054065,0.146963,0.399486,0.399486]) / 2
  //   = [0.332181, 0.185739, 0.241041, 0.241041] -> columns [0, 2] (null tie 2/3: lower):
  // true expert 0 renormalised alone (weight 1), the null slot computes nothing.
  check_slots(plan, 1, {0, moe::no_expert}, {1.0, 0.0});
  // Without renormalisation the true expert keeps q_0.
  const policy raw(moe::null_experts<moe::top_k<>>(wt, wn, {.k = 2}), {.source = moe::similarity_source::attention});
  check_slots(moe_test::route(raw, x, {.attention = att}), 1, {0, moe::no_expert}, {0.332181, 0.0});
  // With token similarity and one-token sequences, it is null_experts<top_k> exactly.
  const std::vector<index> starts = {0, 1};
  const policy tokens(moe::null_experts<moe::top_k<>>(wt, wn, {.k = 2, .renormalize = true}));
  const auto pt = moe_test::route(tokens, x, {.sequence_starts = starts});
  const auto pn = moe_test::route(moe::null_experts<moe::top_k<>>(wt, wn, {.k = 2, .renormalize = true}), x);
  CHECK(std::memcmp(pt.all_experts().data(), pn.all_experts().data(), pt.all_experts().size_bytes()) == 0);
  CHECK(std::memcmp(pt.all_weights().data(), pn.all_weights().data(), pt.all_weights().size_bytes()) == 0);
}

TEST_CASE("composition: route_by_stages reproduces top_k::route bit for bit", "[routing][composition]") {
  moe_test::rng rng(1202);
  const auto w = rng.matrix(32, 40);
  const auto x = rng.matrix(57, 40);
  for (const bool renorm : {false, true}) {
    const moe::top_k<moe::sigmoid_gate> r(w, {.k = 4, .renormalize = renorm, .route_scale = 2.5f});
    moe::routing_plan a, b;
    moe::workspace ws;
    ws.reset();
    r.route(moe::view(x), {}, a, ws);
    moe::route_by_stages(r, moe::view(x), b, ws);
    CHECK(std::memcmp(a.all_experts().data(), b.all_experts().data(), a.all_experts().size_bytes()) == 0);
    CHECK(std::memcmp(a.all_weights().data(), b.all_weights().data(), a.all_weights().size_bytes()) == 0);
    for (index t = 0; t < 57; ++t) CHECK(a.entropy(t) == b.entropy(t));
  }
}

}  // namespace
