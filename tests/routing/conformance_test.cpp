// SPDX-License-Identifier: Apache-2.0
// Every router policy of include/moe/routing/ through the conformance suite of
// support/conformance.hpp (plan shape and validity, expert-major view, determinism, batch
// invariance of per-token routers, bad input), and one policy written here the way a user
// writes one.
#include <catch2/catch.hpp>

#include <memory>
#include <vector>

#include <moe/moe.hpp>

#include "../support/conformance.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::check_router_conformance;

constexpr index E = 16, d = 24;

// A router written outside moe: each token goes to the expert of its largest feature (mod E),
// weight 1, and to the next expert with weight 0.5. Per token.
struct argmax_router {
  using router_type = argmax_router;
  static constexpr bool needs_whole_batch = false;
  index experts = E, width = d;
  index num_experts() const { return experts; }
  index hidden() const { return width; }
  index max_slots() const { return 2; }
  void route(moe::const_matrix_map<float> x, const moe::route_context&, moe::routing_plan& plan, moe::workspace&) const {
    moe::detail::check_extent("argmax_router", "x.cols()", x.cols(), width);
    plan.reset(x.rows(), 2, experts);
    for (index t = 0; t < x.rows(); ++t) {
      index best = 0;
      for (index i = 1; i < width; ++i) {
        if (!(x(t, i) <= x(t, best))) best = i;  // a NaN wins: still a valid expert
      }
      plan.set(t, 0, static_cast<std::int32_t>(best % experts), 1.0f);
      plan.set(t, 1, static_cast<std::int32_t>((best + 1) % experts), 0.5f);
    }
  }
};

// Per-token context of the policies that need one (tokens of one sequence).
void conditional_every_third(std::span<const index> rows, moe_test::context_data& data) {
  for (const index r : rows) data.conditional.push_back(r % 3 != 0);
}
void uniform_attention(std::span<const index> rows, moe_test::context_data& data) {
  const auto L = rows.size();
  data.attention.assign(L * L, L > 0 ? 1.0f / static_cast<float>(L) : 0.0f);
}

TEST_CASE("router conformance: token-choice routers", "[routing][conformance]") {
  moe_test::rng rng(808);
  const auto w = rng.matrix(E, d);
  std::vector<float> bias(E);
  for (index e = 0; e < E; ++e) bias[static_cast<std::size_t>(e)] = 0.03f * static_cast<float>(e % 4);
  SECTION("top_k softmax, k = 4, renormalised") { check_router_conformance(moe::top_k<>(w, {.k = 4, .renormalize = true})); }
  SECTION("top_k sigmoid with a route scale") {
    check_router_conformance(moe::top_k<moe::sigmoid_gate>(w, {.k = 2, .renormalize = true, .route_scale = 2.5f}));
  }
  SECTION("group_limited (DeepSeek-V3)") {
    check_router_conformance(moe::group_limited<moe::sigmoid_gate>(
        w, {.k = 4, .n_groups = 4, .topk_groups = 2, .route_scale = 2.5f, .selection_bias = bias}));
  }
  SECTION("null_experts (AdaMoE)") {
    check_router_conformance(moe::null_experts<moe::top_k<>>(w, rng.matrix(4, d), {.k = 4, .renormalize = true}));
  }
  SECTION("prototypical (ProMoE) with conditional flags") {
    check_router_conformance(moe::prototypical(rng.matrix(E - 1, d), {.k = 2}), conditional_every_third);
  }
  SECTION("dynmole") { check_router_conformance(moe::dynmole(w)); }
  SECTION("blockffn") { check_router_conformance(moe::blockffn(w)); }
  SECTION("adaptive_k") { check_router_conformance(moe::adaptive_k<>(w, {.k_min = 1, .k_max = 6})); }
  SECTION("top_p") { check_router_conformance(moe::top_p<>(w, {.p = 0.8f, .k_min = 1, .k_max = 6})); }
  SECTION("a user's router") { check_router_conformance(argmax_router{}); }
}

TEST_CASE("router conformance: whole-batch routers and wrappers", "[routing][conformance]") {
  moe_test::rng rng(809);
  const auto w = rng.matrix(E, d);
  SECTION("capacity, every convention") {
    for (const auto conv : {moe::capacity_convention::gshard_ceil, moe::capacity_convention::switch_round,
                            moe::capacity_convention::expert_choice_floor}) {
      INFO("convention " << static_cast<int>(conv));
      check_router_conformance(
          moe::capacity<moe::top_k<>>(moe::top_k<>(w, {.k = 2}), {.capacity_factor = 0.75, .convention = conv}));
    }
  }
  SECTION("expert_choice (token-choice fallback for small batches)") {
    check_router_conformance(moe::expert_choice(w, {.small_batch = moe::expert_choice_fallback::token_choice}));
  }
  SECTION("similarity_aware, causal and not") {
    for (const bool causal : {true, false}) {
      check_router_conformance(moe::similarity_aware<moe::top_k<>>(moe::top_k<>(w, {.k = 2}), {.causal = causal}));
    }
  }
  SECTION("similarity_aware over null experts") {
    using inner = moe::null_experts<moe::top_k<>>;
    check_router_conformance(moe::similarity_aware<inner>(inner(w, rng.matrix(3, d), {.k = 3})));
  }
}

TEST_CASE("router conformance: layer_skip with every depth policy", "[routing][conformance]") {
  moe_test::rng rng(810);
  const auto w = rng.matrix(E, d);
  const moe::top_k<> inner(w, {.k = 2, .renormalize = true});
  SECTION("mixture of depths") {
    std::vector<float> r(d);
    for (auto& v : r) v = rng.uniform();
    check_router_conformance(
        moe::layer_skip<moe::top_k<>, moe::mod_capacity>(inner, moe::mod_capacity(r, {.capacity_fraction = 0.5})));
  }
  SECTION("Dr.LLM") {
    const auto w1 = rng.matrix(8, d), w2 = rng.matrix(3, 8);
    std::vector<float> b1(8, 0.1f), b2 = {0.2f, 0.0f, 0.1f};
    check_router_conformance(moe::layer_skip<moe::top_k<>, moe::dr_llm>(inner, moe::dr_llm(w1, b1, w2, b2)));
  }
  SECTION("gamma-MoD") {
    const auto g = std::make_shared<const moe::gamma_mod_router>(rng.matrix(2, d));
    check_router_conformance(
        moe::layer_skip<moe::top_k<>, moe::gamma_mod>(inner, moe::gamma_mod(g, {.instruction_tokens = 10})));
  }
  SECTION("FTP with attention features") {
    const auto w1 = rng.matrix(6, moe::ftp_feature_count);
    std::vector<float> b1(6, 0.0f), w2(6, 0.5f);
    const auto f = std::make_shared<const moe::ftp_router>(w1, b1, w2, 0.1f);
    check_router_conformance(moe::layer_skip<moe::top_k<>, moe::ftp>(inner, moe::ftp(f, {.sparsity = 0.3f})),
                             uniform_attention);
  }
}

}  // namespace
