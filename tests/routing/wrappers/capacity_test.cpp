// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/routing/wrappers/capacity.hpp: docs/routing-spec.md §5 (capacity factor, slot-major
// dispatch order, dropping, batch prioritized routing, DeepSpeed renormalisation), the loss goldens
// of §5 A, and the layer with dropped tokens.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <moe/core/stats.hpp>
#include <moe/layer.hpp>
#include <moe/losses/load_balance.hpp>
#include <moe/losses/z_loss.hpp>
#include <moe/routing/wrappers/capacity.hpp>
#include <moe/routing/routers/expert_choice.hpp>
#include <moe/routing/routers/group_limited.hpp>
#include <moe/routing/wrappers/null_experts.hpp>

#include "../../support/layers.hpp"
#include "../../support/naive.hpp"
#include "../../support/random.hpp"
#include "../../support/policies.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using moe_test::golden;
using moe_test::route_logits;
using capped = moe::capacity<moe::top_k<moe::softmax_gate>>;

namespace {
moe::row_matrix<float> identity(index E) {
  moe::row_matrix<float> w(E, E);
  w.setIdentity();
  return w;
}

// Naive capacity over a base plan: offers in slot-major order (tokens ordered by `order`), a
// counter per expert, kept iff position < C.
moe::routing_plan naive_capacity(const moe::routing_plan& base, index C, const std::vector<index>& order, bool renorm) {
  auto plan = base;
  std::vector<index> count(static_cast<std::size_t>(plan.num_experts()), 0);
  for (index s = 0; s < plan.max_slots(); ++s) {
    for (const index t : order) {
      const auto e = plan.expert(t, s);
      if (e == moe::no_expert) continue;
      if (count[static_cast<std::size_t>(e)]++ >= C) plan.set(t, s, moe::no_expert, 0.0f);
    }
  }
  if (renorm) {
    for (index t = 0; t < plan.num_tokens(); ++t) {
      if (plan.active_slots(t) == base.active_slots(t)) continue;  // lost nothing: unchanged
      double total = 0;
      for (index s = 0; s < plan.max_slots(); ++s) total += plan.weight(t, s);
      for (index s = 0; s < plan.max_slots(); ++s) {
        if (plan.expert(t, s) != moe::no_expert) {
          plan.set(t, s, plan.expert(t, s), total > 0 ? static_cast<float>(plan.weight(t, s) / total) : 0.0f);
        }
      }
    }
  }
  return plan;
}

std::vector<index> position_order(index T) {
  std::vector<index> o(static_cast<std::size_t>(T));
  std::iota(o.begin(), o.end(), 0);
  return o;
}
}  // namespace

TEST_CASE("capacity: golden A of spec §5 (top-1 Switch, C = 3) and its losses", "[routing][capacity][golden]") {
  moe::row_matrix<float> z(6, 2);
  z << 2, 0, 1, 0, 0, 1, 3, 0, 0.5f, 0, 0, 2;
  const capped r(moe::top_k<>(identity(2), {.k = 1}), {.capacity_factor = 1.0});
  CHECK(r.expert_capacity(6) == 3);
  moe::routing_plan plan, before;
  moe::workspace ws;
  ws.reset();
  r.base().route_logits(moe::view(std::as_const(z)), before, ws);
  ws.reset();
  r.route_logits(moe::view(std::as_const(z)), plan, ws);
  const int expert[6] = {0, 0, 1, 0, moe::no_expert, 1};
  const double gate[6] = {0.880797, 0.731059, 0.731059, 0.952574, 0.0, 0.880797};
  for (index t = 0; t < 6; ++t) {
    INFO("token " << t);
    CHECK(plan.expert(t, 0) == expert[t]);
    CHECK(golden(plan.weight(t, 0), gate[t]));
  }
  CHECK(before.expert(4, 0) == 0);  // the dropped assignment existed before dropping
  CHECK(plan.dropped() == 1);
  const auto stats = moe::compute_stats(plan);
  CHECK(stats.assignments_dropped == 1);
  CHECK(stats.tokens_routed_nowhere == 1);
  CHECK(stats.assignments == 5);
  std::ostringstream out;
  out << stats;
  CHECK(out.str().find("dropped 1") != std::string::npos);
  const auto ps = r.policy_stats(plan);
  CHECK(ps.capacity == 3);
  CHECK(ps.dropped == 1);
  CHECK(ps.dropped_fraction == Approx(1.0 / 6.0));

  // Losses on the pre-drop assignment: f = [2/3, 1/3], P = [0.595839, 0.404161].
  CHECK(golden(moe::switch_load_balance_loss(z, 0.01), 0.010639));
  CHECK(golden(moe::load_balance_loss(z, before, {.alpha = 0.01}), 0.010639));
  CHECK(golden(moe::router_z_loss(z, 1.0), 3.789945));
  CHECK(golden(moe::router_z_loss(z, 1e-3), 0.003790));
  // The same plan routed through route() with a before_drop copy.
  moe::routing_plan plan2, before2;
  ws.reset();
  const moe::row_matrix<float> empty(0, 2);
  r.route(moe::view(empty), {}, plan2, ws, before2);  // T = 0: both empty
  CHECK(plan2.num_tokens() == 0);
  CHECK(before2.num_tokens() == 0);
  CHECK(plan2.dropped() == 0);
}

// docs/routing-spec.md §5.4: the three capacity conventions, each with its framework's numbers
// computed by hand.
TEST_CASE("capacity conventions: GShard/DeepSpeed ceil with k, flaxformer round, expert choice floor",
          "[routing][capacity][golden]") {
  using moe::capacity_convention;
  // GShard / DeepSpeed / Megatron: ceil(cf · T · k / E). Top-2, T 64, E 8, cf 1.25: 20.
  const moe::capacity<moe::top_k<>> gshard(moe::top_k<>(identity(8), {.k = 2}), {.capacity_factor = 1.25});
  CHECK(gshard.expert_capacity(64) == 20);
  CHECK(gshard.expert_capacity(7) == 3);  // 1.25 · 7 · 2 / 8 = 2.1875 -> 3
  // flaxformer / T5X: max(int(round(cf · T / E)), min_expert_capacity), no factor k: 10.
  const moe::capacity<moe::top_k<>> flax(moe::top_k<>(identity(8), {.k = 2}),
                                         {.capacity_factor = 1.25, .convention = capacity_convention::switch_round});
  CHECK(flax.expert_capacity(64) == 10);
  CHECK(flax.expert_capacity(7) == 1);   // 1.09375 -> 1
  CHECK(flax.expert_capacity(12) == 2);  // 1.875 -> 2
  // Python's round: ties to even. cf 1, E 8: T 20 -> 2.5 -> 2; T 28 -> 3.5 -> 4; T 4 -> 0.5 -> 0.
  const moe::capacity<moe::top_k<>> even(moe::top_k<>(identity(8), {.k = 1}),
                                         {.capacity_factor = 1.0, .convention = capacity_convention::switch_round});
  CHECK(even.expert_capacity(20) == 2);
  CHECK(even.expert_capacity(28) == 4);
  CHECK(even.expert_capacity(4) == 0);
  CHECK(even.expert_capacity(12) == 2);  // 1.5 -> 2
  const moe::capacity<moe::top_k<>> floor4(moe::top_k<>(identity(8), {.k = 1}),
                                           {.capacity_factor = 1.0, .convention = capacity_convention::switch_round,
                                            .min_capacity = 4});
  CHECK(floor4.expert_capacity(20) == 4);  // min_expert_capacity
  // Expert choice's floor(cf · T / E) as a capacity convention: T 20, E 8 -> 2.5 -> 2; T 23 -> 2.875 -> 2.
  const moe::capacity<moe::top_k<>> fl(moe::top_k<>(identity(8), {.k = 2}),
                                       {.capacity_factor = 1.0, .convention = capacity_convention::expert_choice_floor});
  CHECK(fl.expert_capacity(20) == 2);
  CHECK(fl.expert_capacity(23) == 2);
  CHECK(fl.expert_capacity(24) == 3);

  // The drops each convention makes: 5 tokens all preferring expert 0 of 2, top-1, cf 1.
  // ceil(2.5) = 3 keeps tokens 0..2; round(2.5) = 2 and floor(2.5) = 2 keep tokens 0, 1.
  moe::row_matrix<float> z(5, 2);
  z << 3, 0, 2, 0, 1, 0, 4, 0, 0.5f, 0;
  const std::pair<capacity_convention, index> want[] = {{capacity_convention::gshard_ceil, 3},
                                                        {capacity_convention::switch_round, 2},
                                                        {capacity_convention::expert_choice_floor, 2}};
  for (const auto& [conv, C] : want) {
    INFO(moe::to_string(conv));
    const capped r(moe::top_k<>(identity(2), {.k = 1}), {.capacity_factor = 1.0, .convention = conv});
    CHECK(r.expert_capacity(5) == C);
    const auto plan = route_logits(r, z);
    for (index t = 0; t < 5; ++t) CHECK(plan.expert(t, 0) == (t < C ? 0 : moe::no_expert));
    CHECK(plan.dropped() == 5 - C);
    CHECK(r.policy_stats(plan).capacity == C);
  }

  // Expert choice: k_c = floor(c · T / E) (the paper's), or flaxformer's round, or ceil.
  const moe::expert_choice paper(identity(2), {.capacity_factor = 1.0});
  CHECK(paper.tokens_per_expert(7) == 3);  // 3.5 -> 3
  const moe::expert_choice flax_ec(identity(2), {.capacity_factor = 1.0, .convention = capacity_convention::switch_round});
  CHECK(flax_ec.tokens_per_expert(7) == 4);  // 3.5 -> 4 (even)
  CHECK(flax_ec.tokens_per_expert(5) == 2);  // 2.5 -> 2 (even)
  const moe::expert_choice ceil_ec(identity(2), {.capacity_factor = 1.0, .convention = capacity_convention::gshard_ceil});
  CHECK(ceil_ec.tokens_per_expert(5) == 3);
  const moe::expert_choice min_ec(identity(4), {.capacity_factor = 1.0, .min_capacity = 2});
  CHECK(min_ec.tokens_per_expert(3) == 2);  // floor(0.75) = 0, raised to min_capacity
  CHECK(min_ec.tokens_per_expert(1) == 1);  // never above T
  CHECK_THROWS_WITH(moe::expert_choice(identity(2), {.min_capacity = -1}), Catch::Contains("parameter 'min_capacity'"));
  const auto ec_plan = route_logits(flax_ec, z);  // 5 tokens, k_c = 2: expert 0 picks its best two
  index picked = 0;
  for (index t = 0; t < 5; ++t) picked += ec_plan.active_slots(t);
  CHECK(picked == 4);
}

TEST_CASE("capacity: golden B of spec §5 (top-2 slot ordering, C = 2)", "[routing][capacity][golden]") {
  moe::row_matrix<float> z(3, 3);
  z << 2, 1, 0, 2, 0, 1, 1.5f, 2, 0;
  const capped keep(moe::top_k<>(identity(3), {.k = 2, .renormalize = true}), {.capacity_factor = 1.0});
  CHECK(keep.expert_capacity(3) == 2);
  const auto plan = route_logits(keep, z);
  // slot 0: t0->e0 pos1 kept; t1->e0 pos2 kept; t2->e1 pos1 kept
  // slot 1: t0->e1 pos2 kept; t1->e2 pos1 kept; t2->e0 pos3 DROPPED
  CHECK(plan.expert(0, 0) == 0);
  CHECK(plan.expert(0, 1) == 1);
  CHECK(plan.expert(1, 0) == 0);
  CHECK(plan.expert(1, 1) == 2);
  CHECK(plan.expert(2, 0) == 1);
  CHECK(plan.expert(2, 1) == moe::no_expert);
  CHECK(plan.weight(2, 1) == 0.0f);
  CHECK(plan.dropped() == 1);
  // Default (GShard): the survivor keeps its renormalised weight sigmoid(0.5) = 0.622459.
  CHECK(golden(plan.weight(2, 0), 0.622459));
  CHECK(golden(plan.weight(0, 0), 0.731059));
  // DeepSpeed top-2: the weights are renormalised over the kept routes; a lone survivor gets 1.
  // That is a renormalising base (tokens that lost nothing) plus renormalize_after_drop.
  const capped ds(moe::top_k<>(identity(3), {.k = 2, .renormalize = true}),
                  {.capacity_factor = 1.0, .renormalize_after_drop = true});
  const auto p2 = route_logits(ds, z);
  CHECK(p2.expert(2, 1) == moe::no_expert);
  CHECK(p2.weight(2, 0) == 1.0f);
  CHECK(golden(p2.weight(0, 0), 0.731059));  // the softmax pair renormalised: e/(e+1)
  CHECK(golden(p2.weight(0, 1), 0.268941));
  // With a raw-probability base only the token that lost a route is renormalised.
  const capped raw(moe::top_k<>(identity(3), {.k = 2}), {.capacity_factor = 1.0, .renormalize_after_drop = true});
  const auto p3 = route_logits(raw, z);
  CHECK(p3.weight(2, 0) == 1.0f);
  const double e = std::exp(1.0), total = e * e + e + 1;
  CHECK(golden(p3.weight(0, 0), e * e / total));  // softmax([2, 1, 0]) unchanged
  CHECK(golden(p3.weight(0, 1), e / total));
}

TEST_CASE("capacity: renormalize_after_drop leaves the tokens that lost nothing unchanged, bit for bit",
          "[routing][capacity]") {
  moe_test::rng rng(603);
  const index E = 4, T = 24;
  const auto z = rng.matrix(T, E, 2.0f);
  const moe::top_k<> base(identity(E), {.k = 2, .renormalize = true, .route_scale = 2.5f});
  const capped r(base, {.capacity_factor = 0.75, .renormalize_after_drop = true});
  moe::routing_plan got, before;
  moe::workspace ws;
  ws.reset();
  r.base().route_logits(moe::view(z), before, ws);
  r.route_logits(moe::view(z), got, ws);
  REQUIRE(got.dropped() > 0);
  index lost_some = 0, lost_none = 0;
  for (index t = 0; t < T; ++t) {
    INFO("token " << t);
    if (got.active_slots(t) == before.active_slots(t)) {
      ++lost_none;  // the base's weights, route_scale included
      for (index s = 0; s < 2; ++s) CHECK(got.weight(t, s) == before.weight(t, s));
    } else if (got.active_slots(t) == 1) {
      ++lost_some;  // a lone survivor gets 1 (DeepSpeed top-2)
      CHECK(got.weight(t, 0) + got.weight(t, 1) == 1.0f);
    }
  }
  CHECK(lost_none > 0);
  CHECK(lost_some > 0);
}

TEST_CASE("capacity: batch prioritized routing serves confident tokens first", "[routing][capacity]") {
  moe::row_matrix<float> z(5, 2);
  z << 0.1f, 0, 3, 0, 1, 0, 2, 0, 1, 0;  // everyone prefers expert 0; C = ceil(5/2) = 3
  const capped pos(moe::top_k<>(identity(2), {.k = 1}), {.capacity_factor = 1.0});
  const capped bpr(moe::top_k<>(identity(2), {.k = 1}),
                   {.capacity_factor = 1.0, .priority = moe::capacity_priority::batch_prioritized});
  const auto a = route_logits(pos, z);
  const auto b = route_logits(bpr, z);
  // Position order keeps tokens 0, 1, 2.
  CHECK(std::vector<int>{a.expert(0, 0), a.expert(1, 0), a.expert(2, 0), a.expert(3, 0), a.expert(4, 0)} ==
        std::vector<int>{0, 0, 0, -1, -1});
  // Priority order: t1 (3), t3 (2), then t2 and t4 tie (1): the lower index, t2, wins.
  CHECK(std::vector<int>{b.expert(0, 0), b.expert(1, 0), b.expert(2, 0), b.expert(3, 0), b.expert(4, 0)} ==
        std::vector<int>{-1, 0, 0, 0, -1});
  CHECK(b.dropped() == 2);
}

TEST_CASE("capacity: batch prioritized routing orders by the top-1 gate, not by the renormalised weight",
          "[routing][capacity]") {
  // E = 4, k = 2, cf = 1: C = ceil(1 · 2 · 2 / 4) = 1. Both tokens want expert 0 first.
  // Token 0: p = [0.4, 0.1, 0.25, 0.25] -> experts [0, 2], renormalised weights [0.615, 0.385].
  // Token 1: p ~ [0.5, 0.5, 0, 0]       -> experts [0, 1], renormalised weights [0.5, 0.5].
  // The top-1 gate (V-MoE) puts token 1 (0.5) before token 0 (0.4); the renormalised slot-0
  // weight would put token 0 (0.615) first.
  moe::row_matrix<float> z(2, 4);
  z << std::log(0.4f), std::log(0.1f), std::log(0.25f), std::log(0.25f), 5, 5, -20, -20;
  const capped bpr(moe::top_k<>(identity(4), {.k = 2, .renormalize = true}),
                   {.capacity_factor = 1.0, .priority = moe::capacity_priority::batch_prioritized});
  REQUIRE(bpr.expert_capacity(2) == 1);
  const auto plan = route_logits(bpr, z);
  REQUIRE(plan.has_top_score());
  CHECK(golden(plan.top_score(0), 0.4));
  CHECK(golden(plan.top_score(1), 0.5));
  CHECK(plan.expert(1, 0) == 0);  // token 1 is served first
  CHECK(plan.expert(0, 0) == moe::no_expert);
  CHECK(plan.expert(0, 1) == 2);
  CHECK(plan.expert(1, 1) == 1);
  CHECK(plan.dropped() == 1);
  // Without top scores (a plan from a router that records none), slot-0 weights order the tokens.
  moe::routing_plan manual;
  manual.reset(2, 1, 1);
  manual.set(0, 0, 0, 0.3f);
  manual.set(1, 0, 0, 0.6f);
  CHECK_FALSE(manual.has_top_score());
  const moe::capacity<moe::top_k<>> one(moe::top_k<>(identity(1), {.k = 1}),
                                         {.capacity_factor = 0.5, .priority = moe::capacity_priority::batch_prioritized});
  moe::workspace ws;
  ws.reset();
  one.apply(manual, ws);
  CHECK(manual.expert(0, 0) == moe::no_expert);
  CHECK(manual.expert(1, 0) == 0);
  // With them, they decide; reset() forgets them.
  manual.reset(2, 1, 1);
  manual.set(0, 0, 0, 0.3f);
  manual.set(1, 0, 0, 0.6f);
  manual.set_top_score(0, 0.9f);
  manual.set_top_score(1, 0.1f);
  one.apply(manual, ws);
  CHECK(manual.expert(0, 0) == 0);
  CHECK(manual.expert(1, 0) == moe::no_expert);
  manual.reset(2, 1, 1);
  CHECK_FALSE(manual.has_top_score());
}

TEST_CASE("token-choice routers record the top-1 gate score of each token", "[routing][capacity]") {
  moe::row_matrix<float> z(3, 4);
  z << 1, 0, -1, 0.5f, 0, 1, 0.5f, 0.5f, 1, 1, -0.5f, 1;  // the common example's logits
  // Softmax top-2 (§2.5): p of the first choice, also with renormalisation and route_scale.
  const auto p = route_logits(moe::top_k<>(identity(4), {.k = 2, .renormalize = true, .route_scale = 3.0f}), z);
  CHECK(golden(p.top_score(0), 0.473991));
  CHECK(golden(p.top_score(1), 0.387456));
  CHECK(golden(p.top_score(2), 0.310257));
  // Group-limited (§4 golden): the unbiased sigmoid score of the first choice.
  const moe::group_limited<> g(identity(4), {.k = 2, .n_groups = 2, .topk_groups = 1, .route_scale = 2.5f,
                                             .selection_bias = {0, 0, 0.3f, 0.1f}});
  const auto pg = route_logits(g, z);
  REQUIRE(pg.has_top_score());
  CHECK(golden(pg.top_score(0), 0.622459));  // S = [3, 2]
  CHECK(golden(pg.top_score(1), 0.622459));  // S = [2, 3]
  CHECK(golden(pg.top_score(2), 0.731059));  // S = [3, 2]
  // Null experts (§7 golden): the first selected column, a null one included.
  moe::row_matrix<float> zn(3, 4);
  zn << 2, 1, 0, 0, 1, -1, 0.5f, 0, -1, 0, 1, 1;
  const moe::row_matrix<float> w_true = identity(4).topRows(2), w_null = identity(4).bottomRows(2);
  const moe::null_experts<moe::top_k<>> n(w_true, w_null, {.k = 2, .renormalize = true});
  const auto pn = route_logits(n, zn);
  REQUIRE(pn.has_top_score());
  CHECK(golden(pn.top_score(0), 0.610296));
  CHECK(golden(pn.top_score(1), 0.473991));
  CHECK(golden(pn.top_score(2), 0.399486));
}

TEST_CASE("capacity equals the naive slot-major reference on random tokens", "[routing][capacity]") {
  moe_test::rng rng(601);
  const index d = 20;
  for (const index E : {4, 16, 64}) {
    for (const int k : {1, 2, 4}) {
      for (const double cf : {0.5, 1.0, 1.25}) {
        for (const bool bpr : {false, true}) {
          for (const bool renorm : {false, true}) {
            const index T = 97;
            const auto w = rng.matrix(E, d);
            const auto x = rng.matrix(T, d);
            const moe::top_k<> base(w, {.k = k, .renormalize = k > 1});
            const capped r(base, {.capacity_factor = cf,
                                  .priority = bpr ? moe::capacity_priority::batch_prioritized
                                                  : moe::capacity_priority::position,
                                  .renormalize_after_drop = renorm});
            moe::routing_plan got, before;
            moe::workspace ws;
            ws.reset();
            r.route(moe::view(x), {}, got, ws, before);
            const index C = r.expert_capacity(T);
            CHECK(C == std::min<index>(static_cast<index>(std::ceil(cf * T * k / E - 1e-9)), T));
            auto order = position_order(T);
            if (bpr) {
              // V-MoE: descending top-1 gate, the largest softmax probability (naive, in double),
              // ties to the lower token.
              std::vector<double> top(static_cast<std::size_t>(T));
              for (index t = 0; t < T; ++t) {
                const auto pt = moe_test::naive_softmax(moe_test::naive_logits(w, x.data() + t * d));
                top[static_cast<std::size_t>(t)] = *std::max_element(pt.begin(), pt.end());
              }
              std::stable_sort(order.begin(), order.end(), [&](index a, index b) { return top[a] > top[b]; });
            }
            const auto want = naive_capacity(before, C, order, renorm);
            INFO("E " << E << ", k " << k << ", cf " << cf << ", bpr " << bpr << ", renorm " << renorm);
            REQUIRE(std::equal(got.all_experts().begin(), got.all_experts().end(), want.all_experts().begin()));
            for (std::size_t i = 0; i < got.all_weights().size(); ++i) {
              REQUIRE(got.all_weights()[i] == Approx(want.all_weights()[i]).epsilon(1e-6));
            }
            got.build_expert_major();
            for (index e = 0; e < E; ++e) CHECK(got.load(e) <= C);
            CHECK(got.dropped() + got.total_assignments() == T * k);
          }
        }
      }
    }
  }
}

TEST_CASE("capacity and expert choice: a huge capacity factor clamps to T (no index overflow)",
          "[routing][capacity]") {
  const capped big(moe::top_k<>(identity(4), {.k = 2}), {.capacity_factor = 1e300});
  CHECK(big.expert_capacity(10) == 10);
  CHECK(big.expert_capacity(0) == 0);
  const moe::expert_choice ec(identity(4), {.capacity_factor = 1e300});
  CHECK(ec.tokens_per_expert(10) == 10);
}

TEST_CASE("capacity: C >= T, drop_tokens = false and min_capacity", "[routing][capacity]") {
  moe_test::rng rng(602);
  const index E = 8, d = 12, T = 40;
  const auto w = rng.matrix(E, d);
  auto x = rng.matrix(T, d);
  for (index t = 0; t < T; ++t) x(t, 0) = 5.0f;  // skew every token towards the same experts
  const moe::top_k<> base(w, {.k = 2});
  moe::routing_plan want;
  moe::workspace ws;
  ws.reset();
  base.route(moe::view(std::as_const(x)), {}, want, ws);
  auto same = [&](const capped& r) {
    moe::routing_plan got;
    ws.reset();
    r.route(moe::view(std::as_const(x)), {}, got, ws);
    return got.dropped() == 0 &&
           std::equal(got.all_experts().begin(), got.all_experts().end(), want.all_experts().begin()) &&
           std::equal(got.all_weights().begin(), got.all_weights().end(), want.all_weights().begin());
  };
  const capped big(base, {.capacity_factor = 100.0});
  CHECK(big.expert_capacity(T) == T);  // clamped to T: nothing can be dropped
  CHECK(same(big));
  const capped no_drop(base, {.capacity_factor = 0.1, .drop_tokens = false});
  CHECK(no_drop.expert_capacity(T) == T);
  CHECK(same(no_drop));
  const capped tight(base, {.capacity_factor = 0.1});
  CHECK(tight.expert_capacity(T) == 1);  // ceil(0.1 · 40 · 2 / 8) = 1
  CHECK_FALSE(same(tight));
  const capped floor(base, {.capacity_factor = 0.1, .min_capacity = 7});
  CHECK(floor.expert_capacity(T) == 7);
  CHECK(floor.expert_capacity(3) == 3);  // clamped to T
  // The §1.2 guard: 1.1 · 100 · 1 / 2 = 55.00000000000001 gives 55, not 56.
  const capped guard(moe::top_k<>(identity(2), {.k = 1}), {.capacity_factor = 1.1});
  CHECK(guard.expert_capacity(100) == 55);
  const capped guard2(moe::top_k<>(identity(2), {.k = 1}), {.capacity_factor = 1.2});
  CHECK(guard2.expert_capacity(50) == 30);
}

TEST_CASE("capacity wraps other token-choice policies", "[routing][capacity]") {
  moe_test::rng rng(603);
  const index E = 16, d = 8, T = 64;
  const moe::capacity<moe::group_limited<>> r(
      moe::group_limited<>(rng.matrix(E, d), {.k = 4, .n_groups = 4, .topk_groups = 2}), {.capacity_factor = 0.75});
  static_assert(moe::router<moe::capacity<moe::group_limited<>>>);
  const auto x = rng.matrix(T, d);
  moe::routing_plan plan = moe_test::route(r, x);
  plan.build_expert_major();
  CHECK(r.expert_capacity(T) == 12);
  for (index e = 0; e < E; ++e) CHECK(plan.load(e) <= 12);
  CHECK(plan.dropped() == T * 4 - plan.total_assignments());
  CHECK(plan.dropped() > 0);
}

TEST_CASE("capacity: bad configurations throw moe::error naming the parameter", "[routing][capacity][error]") {
  const moe::top_k<> base(identity(4), {.k = 2});
  for (const double cf : {0.0, -1.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    CHECK_THROWS_WITH(capped(base, {.capacity_factor = cf}), Catch::Contains("parameter 'capacity_factor'"));
  }
  CHECK_THROWS_WITH(capped(base, {.min_capacity = -1}), Catch::Contains("parameter 'min_capacity'"));
}

TEST_CASE("layer: capacity with dropped tokens equals the naive reference", "[routing][capacity][layer]") {
  moe_test::rng rng(604);
  const index E = 8, d = 32, f = 24, T = 45;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  auto x = rng.matrix(T, d);
  for (index t = 0; t < T; ++t) x(t, 1) += 2.0f;  // skew, so that experts overflow
  for (const int k : {1, 2}) {
    const double cf = 0.75;
    moe::layer<capped, moe::swiglu_experts<float>, moe::device::cpu> layer(
        capped(moe::top_k<>(router_w, {.k = k, .renormalize = true}), {.capacity_factor = cf}), moe_test::make_bank(w),
        moe::device::cpu{2});
    moe::row_matrix<float> y(T, d);
    layer.forward(x, y);
    // Naive: top-k per token, then offers in slot-major token order; dropped ones contribute nothing.
    const index C = moe::capacity_ceil(cf * T * k / E);
    std::vector<moe_test::naive_route> routes;
    for (index t = 0; t < T; ++t) {
      routes.push_back(moe_test::naive_top_k(moe_test::naive_logits(router_w, x.data() + t * d), k, false, true));
    }
    std::vector<index> count(static_cast<std::size_t>(E), 0);
    std::vector<double> want(static_cast<std::size_t>(T * d), 0.0);
    index dropped = 0, nowhere = 0;
    std::vector<int> kept(static_cast<std::size_t>(T), 0);
    for (index s = 0; s < k; ++s) {
      for (index t = 0; t < T; ++t) {
        const auto e = routes[t].experts[static_cast<std::size_t>(s)];
        if (count[static_cast<std::size_t>(e)]++ >= C) {
          ++dropped;
          continue;
        }
        ++kept[t];
        w.accumulate(e, x.data() + t * d, routes[t].weights[static_cast<std::size_t>(s)], want.data() + t * d);
      }
    }
    INFO("k = " << k);
    CHECK(dropped > 0);
    CHECK(layer.stats().assignments_dropped == dropped);
    CHECK(moe_test::relative_error(y, want) < 1e-5);
    for (index t = 0; t < T; ++t) {
      if (kept[t] > 0) continue;
      ++nowhere;
      CHECK(y.row(t).isZero(0.0));  // a token with no surviving assignment outputs exactly 0
    }
    CHECK(layer.stats().tokens_routed_nowhere == nowhere);
    CHECK(layer.policy_stats().dropped == dropped);
    if (k == 1) CHECK(nowhere > 0);
  }
}

}  // namespace
