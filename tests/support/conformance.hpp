// SPDX-License-Identifier: Apache-2.0
#pragma once

// The router conformance suite: what every router policy promises (docs/architecture.md §2.1,
// docs/routing-spec.md §1), checked on any moe::router, ours or a user's:
//   1. an empty batch routes to an empty plan over num_experts() experts;
//   2. the plan has the router's shape; every slot names an expert in [0, E) or moe::no_expert
//      (then with weight 0); a token names each expert at most once; weights, output scales and
//      entropies are finite; pass counts are in [0, 255];
//   3. the expert-major view holds exactly the slots of nonzero weight, each under its expert
//      with its weight, tokens ascending;
//   4. routing is deterministic: the same batch routes to the same bits with a fresh or a reused
//      plan and workspace, and on 1, 2 or 3 threads (slots, weights, entropies and top-1 scores);
//   5. a per-token router (needs_whole_batch() false) is batch invariant: a token alone, or in
//      the batch reversed, gets the same slots bit for bit;
//   6. a batch of the wrong width throws moe::error naming 'x.cols()'; a NaN token state
//      throws moe::error or routes to a plan that still meets 2.
// A policy that needs per-token context supplies `context(rows, data)`: the context of a batch
// made of the global rows `rows` (one sequence), its storage in `data`.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include <moe/concepts.hpp>
#include <moe/core/error.hpp>
#include <moe/plan.hpp>

#include "random.hpp"

namespace moe_test {

/// Storage of a route_context for one batch.
struct context_data {
  std::vector<moe::index> sequence_starts;
  std::vector<std::uint8_t> conditional;
  std::vector<float> attention;
  moe::route_context ctx(int threads = 0) const {
    moe::route_context c;
    c.sequence_starts = sequence_starts;
    c.conditional = conditional;
    c.attention = attention;
    c.threads = threads;
    return c;
  }
};
using context_fn = std::function<void(std::span<const moe::index> rows, context_data& data)>;

namespace detail {
template <class R>
moe::routing_plan route_rows(const R& r, const moe::row_matrix<float>& X, std::span<const moe::index> rows,
                             const context_fn& context, int threads, moe::routing_plan* reuse = nullptr,
                             moe::workspace* ws_reuse = nullptr) {
  moe::row_matrix<float> x(static_cast<moe::index>(rows.size()), X.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) x.row(static_cast<moe::index>(i)) = X.row(rows[i]);
  context_data data;
  if (context) context(rows, data);
  moe::routing_plan fresh;
  moe::workspace ws_fresh;
  moe::routing_plan& plan = reuse ? *reuse : fresh;
  moe::workspace& ws = ws_reuse ? *ws_reuse : ws_fresh;
  ws.reset();
  r.route(moe::view(std::as_const(x)), data.ctx(threads), plan, ws);
  return plan;
}

inline bool same_token(const moe::routing_plan& a, moe::index ta, const moe::routing_plan& b, moe::index tb) {
  if (a.max_slots() != b.max_slots() || a.passes(ta) != b.passes(tb)) return false;
  const float sa = a.output_scale(ta), sb = b.output_scale(tb);
  if (std::memcmp(&sa, &sb, sizeof sa) != 0) return false;
  for (moe::index s = 0; s < a.max_slots(); ++s) {
    const float wa = a.weight(ta, s), wb = b.weight(tb, s);
    if (a.expert(ta, s) != b.expert(tb, s) || std::memcmp(&wa, &wb, sizeof wa) != 0) return false;
  }
  return true;
}

inline bool same_plan(const moe::routing_plan& a, const moe::routing_plan& b) {
  if (a.num_tokens() != b.num_tokens() || a.num_experts() != b.num_experts()) return false;
  for (moe::index t = 0; t < a.num_tokens(); ++t) {
    if (!same_token(a, t, b, t)) return false;
  }
  return a.dropped() == b.dropped();
}

/// The entropies and top-1 scores the plans record are bitwise the same.
inline bool same_records(const moe::routing_plan& a, const moe::routing_plan& b) {
  if (a.num_tokens() != b.num_tokens() || a.has_entropy() != b.has_entropy() ||
      a.has_top_score() != b.has_top_score()) {
    return false;
  }
  for (moe::index t = 0; t < a.num_tokens(); ++t) {
    const float ha = a.entropy(t), hb = b.entropy(t), sa = a.top_score(t), sb = b.top_score(t);
    if (std::memcmp(&ha, &hb, sizeof ha) != 0 || std::memcmp(&sa, &sb, sizeof sa) != 0) return false;
  }
  return true;
}

/// Property 2 and 3 on one plan.
template <class R>
void check_plan(const R& r, moe::routing_plan& plan, moe::index T) {
  const moe::index E = r.num_experts();
  REQUIRE(plan.num_tokens() == T);
  REQUIRE(plan.num_experts() == E);
  REQUIRE(plan.max_slots() <= r.max_slots());
  moe::index nonzero = 0;
  for (moe::index t = 0; t < T; ++t) {
    INFO("token " << t);
    std::vector<std::int32_t> seen;
    for (moe::index s = 0; s < plan.max_slots(); ++s) {
      const auto e = plan.expert(t, s);
      const float w = plan.weight(t, s);
      INFO("slot " << s << ": expert " << e << ", weight " << w);
      CHECK(std::isfinite(w));
      if (e == moe::no_expert) {
        CHECK(w == 0.0f);
        continue;
      }
      CHECK((e >= 0 && e < E));
      CHECK(std::find(seen.begin(), seen.end(), e) == seen.end());
      seen.push_back(e);
      nonzero += w != 0.0f;
    }
    CHECK((plan.passes(t) >= 0 && plan.passes(t) <= 255));
    CHECK(std::isfinite(plan.output_scale(t)));
    if (plan.has_entropy()) CHECK((std::isfinite(plan.entropy(t)) && plan.entropy(t) >= -1e-6f));
  }
  plan.build_expert_major();
  REQUIRE(plan.has_expert_major());
  REQUIRE(static_cast<moe::index>(plan.entries().size()) == nonzero);
  for (moe::index e = 0; e < E; ++e) {
    moe::index last = -1;
    for (const auto& en : plan.entries(e)) {
      CHECK(plan.expert(en.token, en.slot) == e);
      CHECK(plan.weight(en.token, en.slot) == en.weight);
      CHECK(en.weight != 0.0f);
      CHECK(en.token >= last);
      last = en.token;
    }
  }
}
}  // namespace detail

/// Puts router `r` through properties 1-6 on T random token states (scale `scale`).
template <class R>
void check_router_conformance(const R& r, const context_fn& context = {}, moe::index T = 37, float scale = 2.0f,
                              std::uint64_t seed = 4242) {
  static_assert(moe::router<R>, "check_router_conformance: R must model moe::router");
  const moe::index d = r.hidden();
  rng gen(seed);
  const moe::row_matrix<float> X = gen.matrix(T, d, scale);
  std::vector<moe::index> all(static_cast<std::size_t>(T));
  std::iota(all.begin(), all.end(), 0);

  // 1. Empty batch.
  {
    auto empty = detail::route_rows(r, X, {}, context, 1);
    CHECK(empty.num_tokens() == 0);
    CHECK(empty.num_experts() == r.num_experts());
  }
  // 2, 3. The plan of the whole batch.
  auto plan = detail::route_rows(r, X, all, context, 1);
  detail::check_plan(r, plan, T);
  // 4. Determinism: reused plan and workspace (after a batch of another size), and 2 and 3
  // threads.
  {
    moe::routing_plan reused;
    moe::workspace ws;
    const std::vector<moe::index> some = {3, 1, 4};
    detail::route_rows(r, X, some, context, 1, &reused, &ws);
    detail::route_rows(r, X, all, context, 1, &reused, &ws);
    CHECK(detail::same_plan(reused, plan));
    for (const int threads : {2, 3}) {
      INFO(threads << " threads");
      const auto threaded = detail::route_rows(r, X, all, context, threads);
      CHECK(detail::same_plan(threaded, plan));
      CHECK(detail::same_records(threaded, plan));
    }
  }
  // 5. Batch invariance of per-token routers.
  if constexpr (!moe::needs_whole_batch<R>()) {
    std::vector<moe::index> reversed(all.rbegin(), all.rend());
    const auto rev = detail::route_rows(r, X, reversed, context, 1);
    for (moe::index t = 0; t < T; ++t) {
      INFO("token " << t << " in the reversed batch");
      CHECK(detail::same_token(rev, T - 1 - t, plan, t));
    }
    for (moe::index t = 0; t < T; t += 6) {
      const std::vector<moe::index> one = {t};
      INFO("token " << t << " alone");
      CHECK(detail::same_token(detail::route_rows(r, X, one, context, 1), 0, plan, t));
    }
  }
  // 6. Bad input.
  {
    const moe::row_matrix<float> wide = gen.matrix(4, d + 1);
    context_data data;
    const std::vector<moe::index> four = {0, 1, 2, 3};
    if (context) context(four, data);
    moe::routing_plan p;
    moe::workspace ws;
    ws.reset();
    try {
      r.route(moe::view(wide), data.ctx(), p, ws);
      FAIL("a batch of width d + 1 did not throw");
    } catch (const moe::error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find("x.cols()") != std::string::npos);
    }
    moe::row_matrix<float> bad = X.topRows(4);
    bad(2, d / 2) = std::numeric_limits<float>::quiet_NaN();
    ws.reset();
    bool threw = false;
    try {
      r.route(moe::view(std::as_const(bad)), data.ctx(), p, ws);
    } catch (const moe::error&) {
      threw = true;
    }
    if (!threw) detail::check_plan(r, p, 4);
  }
}

}  // namespace moe_test
