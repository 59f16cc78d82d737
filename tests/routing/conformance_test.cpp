// SPDX-License-Identifier: Apache-2.0
// Every router policy of include/moe/routing/ through the conformance suite of
// support/conformance.hpp (plan shape and validity, expert-major view, determinism, batch
// invariance of per-token routers, bad input), and one policy written here the way a user
// writes one.
#include <catch2/catch.hpp>

#include <limits>
#include <memory>
#include <string>
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

// The batch as three sequences (the first third, the second, the rest).
void three_sequences(std::span<const index> rows, moe_test::context_data& data) {
  const auto n = static_cast<index>(rows.size());
  data.sequence_starts = {0, n / 3, 2 * n / 3};
}
// Three sequences with an uneven attention, some of its rows all zero.
void three_attended_sequences(std::span<const index> rows, moe_test::context_data& data) {
  three_sequences(rows, data);
  const auto n = static_cast<index>(rows.size());
  for (index q = 0; q < 3; ++q) {
    const index s0 = data.sequence_starts[static_cast<std::size_t>(q)];
    const index s1 = q < 2 ? data.sequence_starts[static_cast<std::size_t>(q + 1)] : n;
    for (index i = s0; i < s1; ++i) {
      for (index j = s0; j < s1; ++j) {
        const index a = rows[static_cast<std::size_t>(i)], b = rows[static_cast<std::size_t>(j)];
        data.attention.push_back(a % 7 == 5 ? 0.0f : static_cast<float>((a + 2 * b) % 4));
      }
    }
  }
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
  SECTION("blockffn with a gain") {
    std::vector<float> gain(E);
    for (index e = 0; e < E; ++e) gain[static_cast<std::size_t>(e)] = 0.5f + 0.125f * static_cast<float>(e % 5);
    check_router_conformance(moe::blockffn(w, {.gain = gain}));
  }
  SECTION("prototypical, softmax and sigmoid gates") {
    for (const auto a : {moe::prototype_activation::softmax, moe::prototype_activation::sigmoid}) {
      check_router_conformance(moe::prototypical(rng.matrix(E - 2, d), {.k = 3, .activation = a,
                                                                        .unconditional_experts = 2}),
                               conditional_every_third);
    }
  }
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
  SECTION("expert_choice, every convention") {
    for (const auto conv : {moe::capacity_convention::gshard_ceil, moe::capacity_convention::switch_round,
                            moe::capacity_convention::expert_choice_floor}) {
      check_router_conformance(moe::expert_choice(
          w, {.capacity_factor = 1.5, .convention = conv, .small_batch = moe::expert_choice_fallback::route_nowhere}));
    }
  }
  SECTION("similarity_aware over three sequences, in logit space and weighing the own scores") {
    check_router_conformance(moe::similarity_aware<moe::top_k<>>(
                                 moe::top_k<>(w, {.k = 3, .renormalize = true}),
                                 {.causal = false, .space = moe::mix_space::logit, .combine = moe::combine_weights::own}),
                             three_sequences);
  }
  SECTION("similarity_aware on three sequences' attention") {
    check_router_conformance(moe::similarity_aware<moe::top_k<>>(
                                 moe::top_k<>(w, {.k = 2}), {.source = moe::similarity_source::attention, .sharpness = 0.5f}),
                             three_attended_sequences);
  }
  SECTION("similarity_aware over null experts") {
    using inner = moe::null_experts<moe::top_k<>>;
    check_router_conformance(moe::similarity_aware<inner>(inner(w, rng.matrix(3, d), {.k = 3})));
  }
}

// The message of the moe::error that routing `x` with `r` on `threads` threads raises ("" if none).
template <class R>
std::string route_error(const R& r, const moe::row_matrix<float>& x, int threads, const moe::route_context& base = {}) {
  moe::route_context ctx = base;
  ctx.threads = threads;
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  try {
    r.route(moe::view(x), ctx, plan, ws);
  } catch (const moe::error& e) {
    return e.what();
  }
  return "";
}

TEST_CASE("routers on threads name the lowest bad token, as one thread does", "[routing][conformance][threads]") {
  moe_test::rng rng(811);
  const auto w = rng.matrix(E, d);
  auto x = rng.matrix(40, d);
  x(33, 5) = std::numeric_limits<float>::quiet_NaN();  // in the last thread's share
  x(21, 2) = std::numeric_limits<float>::quiet_NaN();  // in a middle share: the one named
  const auto check = [&](const auto& r) {
    const std::string one = route_error(r, x, 1);
    INFO(one);
    CHECK(one.find("token 21") != std::string::npos);
    for (const int threads : {2, 3, 4}) CHECK(route_error(r, x, threads) == one);
  };
  SECTION("blockffn") { check(moe::blockffn(w)); }
  SECTION("prototypical") { check(moe::prototypical(w)); }
  SECTION("expert_choice") { check(moe::expert_choice(w)); }
  SECTION("similarity_aware") { check(moe::similarity_aware<moe::top_k<>>(moe::top_k<>(w))); }
  SECTION("prototypical: an unconditional token without unconditional experts") {
    std::vector<std::uint8_t> cond(40, 1);
    cond[17] = 0;
    cond[35] = 0;
    x(21, 2) = 0.5f;
    x(33, 5) = 0.5f;
    const moe::prototypical r(w, {.unconditional_experts = 0});
    const std::string one = route_error(r, x, 1, {.conditional = cond});
    CHECK(one.find("marks token 17") != std::string::npos);
    for (const int threads : {2, 3, 4}) CHECK(route_error(r, x, threads, {.conditional = cond}) == one);
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
