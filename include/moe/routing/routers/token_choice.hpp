// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The stage protocol of token-choice policies, which wrapper policies build on.
//
// A token-choice policy routes each token by five stages over one row of C score columns
// (C = columns(); a column is an expert, or something that computes nothing such as a null
// expert):
//
//   1. logits(x, z, ldz, ws)           z [T × C] (row stride ldz) from the token states x [T × d]:
//                                      a linear map, then scale_logits()
//      scale_logits(z, T, ldz)         optional: what logits() applies after the linear map (a
//                                      temperature); route_logits_by_stages() applies it to the
//                                      caller's raw logits, so that route_logits(W x) = route(x)
//   2. prepare_row(z, C, t)            the NaN policy on one row (throws or maps NaN to -inf);
//      prepare_row(z, C, t, where, p)  optional: the same, an error naming `where` and the
//                                      parameter `p` ('x' for route, 'z' for route_logits)
//   3. gate_row(z, s) -> bool          scores s [C] = gate(z); false for a degenerate row
//      row_entropy(s, scratch)         the entropy the plan records for the token
//   4. select_row(z, s, idx, scratch)  up to max_slots() columns, best first (ties: lower
//                                      column); a -inf entry of z is never selected
//   5. weigh_row(s, idx, n, w)         combine weights of the n selected columns; it may
//                                      overwrite s (the row is scratch after selection)
//
// and maps each selected column to its expert with column_expert(c) (moe::no_expert for a
// column that computes nothing). `scratch` always holds C floats.
//
// A wrapper takes its base as a template parameter and either forwards these stages, changing
// one (moe::null_experts adds columns and changes step 5), or runs them itself with other
// inputs (moe::similarity_aware passes mixed scores to steps 4 and 5). Step 4 is called with the
// logits as its first argument; a wrapper that selects on scores passes its key row there
// (a monotone gate selects on that argument). moe::route_by_stages() runs the five stages for a
// batch, which is all that route() of a per-token policy has to do.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// A router whose per-token stages (logits, prepare, gate, select, weigh) are public, so that
/// wrapper policies (moe::null_experts, moe::similarity_aware) can reuse them. See the comment
/// at the top of routing/routers/token_choice.hpp.
template <class P>
concept token_choice_policy =
    router<P> && requires(const P& p, const_matrix_map<float> x, float* z, float* s,
                          std::int32_t* idx, const std::int32_t* cidx, index n, workspace& ws) {
      { p.columns() } -> std::convertible_to<index>;
      p.logits(x, z, n, ws);
      p.prepare_row(z, n, n);
      { p.gate_row(z, s) } -> std::convertible_to<bool>;
      { p.row_entropy(s, z) } -> std::convertible_to<float>;
      { p.select_row(z, s, idx, z) } -> std::convertible_to<index>;
      p.weigh_row(s, cidx, n, z);
      { p.column_expert(n) } -> std::convertible_to<std::int32_t>;
    };

static_assert(token_choice_policy<top_k<softmax_gate>>);
static_assert(token_choice_policy<top_k<sigmoid_gate>>);

namespace detail::token_choice {

/// The NaN stage of `policy` on one row: its prepare_row(z, C, t, where, param) when it has one,
/// else prepare_row(z, C, t).
template <class P>
void prepare(const P& policy, float* z, index C, index t, std::string_view where, std::string_view param) {
  if constexpr (requires { policy.prepare_row(z, C, t, where, param); }) {
    policy.prepare_row(z, C, t, where, param);
  } else {
    policy.prepare_row(z, C, t);
  }
}

/// The temperature stage of `policy` (scale_logits) on `rows` rows of C raw logits, if it has one.
template <class P>
void scale(const P& policy, float* z, index rows, index C) {
  if constexpr (requires { policy.scale_logits(z, rows, C); }) policy.scale_logits(z, rows, C);
}

/// Runs prepare, gate, select and weigh on the rows of `z [T × C]` (modified in place); NaN
/// errors name `where` and `param`.
template <class P>
void route_rows(const P& policy, float* z, index T, routing_plan& plan, workspace& ws, std::string_view where,
                std::string_view param) {
  const index C = policy.columns();
  const index K = policy.max_slots();
  float* s = ws.take<float>(static_cast<std::size_t>(C));        // [C]
  float* scratch = ws.take<float>(static_cast<std::size_t>(C));  // [C]
  std::int32_t* idx = ws.take<std::int32_t>(static_cast<std::size_t>(std::max<index>(K, 1)));
  float* w = ws.take<float>(static_cast<std::size_t>(std::max<index>(K, 1)));
  plan.mark_top_score();  // degenerate tokens keep 0
  for (index t = 0; t < T; ++t) {
    float* zt = z + t * C;
    prepare(policy, zt, C, t, where, param);
    if (!policy.gate_row(zt, s)) {
      plan.set_entropy(t, 0.0f);
      continue;  // degenerate: routes nowhere
    }
    plan.set_entropy(t, policy.row_entropy(s, scratch));
    const index count = policy.select_row(zt, s, idx, scratch);
    plan.set_top_score(t, count > 0 ? s[idx[0]] : 0.0f);  // before weigh_row may overwrite s
    policy.weigh_row(s, idx, count, w);
    for (index slot = 0; slot < count; ++slot) {
      plan.set(t, slot, policy.column_expert(idx[slot]), w[slot]);
    }
  }
}

}  // namespace detail::token_choice

/// Routes `x [T × d]` into `plan` (`[T × max_slots()]` over num_experts() experts) by running
/// the stages of `policy` on every token; `where` names the caller in error messages.
template <token_choice_policy P>
void route_by_stages(const P& policy, const_matrix_map<float> x, routing_plan& plan, workspace& ws,
                     const char* where = "moe::route_by_stages") {
  detail::check_extent(where, "x.cols()", x.cols(), policy.hidden());
  const index T = x.rows();
  const index C = policy.columns();
  plan.reset(T, policy.max_slots(), policy.num_experts());
  if (T == 0) return;
  float* z = ws.take<float>(static_cast<std::size_t>(T * C));  // [T × C]
  policy.logits(x, z, C, ws);
  detail::token_choice::route_rows(policy, z, T, plan, ws, where, "x");
}

/// Like route_by_stages() from precomputed raw logits `z = W x [T × columns()]` (copied): the
/// linear map is skipped, the policy's scale_logits() stage (its temperature) is applied once,
/// so that this routes `W x` as route_by_stages() routes x.
template <token_choice_policy P>
void route_logits_by_stages(const P& policy, const_matrix_map<float> z, routing_plan& plan, workspace& ws,
                            const char* where = "moe::route_logits_by_stages") {
  const index C = policy.columns();
  detail::check_extent(where, "z.cols()", z.cols(), C);
  const index T = z.rows();
  plan.reset(T, policy.max_slots(), policy.num_experts());
  if (T == 0) return;
  float* copy = detail::copy_logits(z, ws);  // [T × C]
  detail::token_choice::scale(policy, copy, T, C);
  detail::token_choice::route_rows(policy, copy, T, plan, ws, where, "z");
}

namespace detail::token_choice {

/// Stand-in options type of a policy that has no `options()`.
struct no_options {};

/// The options type of a policy (`decltype(p.options())` without cv-ref), or no_options.
template <class P>
struct options_of {
  using type = no_options;
};
template <class P>
  requires requires(const P& p) { p.options(); }
struct options_of<P> {
  using type = std::remove_cvref_t<decltype(std::declval<const P&>().options())>;
};
template <class P>
using options_of_t = typename options_of<P>::type;

}  // namespace detail::token_choice
}  // namespace moe
