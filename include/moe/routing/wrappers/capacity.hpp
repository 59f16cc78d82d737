// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/rounding.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// The order in which assignments claim places in an expert's capacity (within one slot).
enum class capacity_priority {
  position,          ///< ascending token index (GShard, Switch, DeepSpeed; the default)
  /// descending top-1 gate score (routing_plan::top_score, the first choice's score before
  /// renormalisation and scaling), ties by lower token index (V-MoE batch prioritized routing,
  /// docs/routing-spec.md §5); a base that records no top scores is ordered by its slot-0 weight instead
  batch_prioritized
};

/// Options of moe::capacity (docs/routing-spec.md §5).
struct capacity_options {
  /// cf in the capacity formula of `convention`; must be finite and > 0.
  double capacity_factor = 1.0;
  /// How C follows from cf: `ceil(cf · T · K / E)` (gshard_ceil, the default: GShard, DeepSpeed),
  /// `round(cf · T / E)` with ties to even and no K (switch_round: flaxformer / T5X), or
  /// `floor(cf · T / E)` (expert_choice_floor). docs/routing-spec.md §5.4.
  capacity_convention convention = capacity_convention::gshard_ceil;
  /// Lower bound of C (DeepSpeed's `min_capacity`, flaxformer's `min_expert_capacity`); >= 0.
  index min_capacity = 0;
  /// false: the capacity is the largest load, nothing is dropped (DeepSpeed `drop_tokens=False`).
  bool drop_tokens = true;
  /// Order of the assignments inside each slot.
  capacity_priority priority = capacity_priority::position;
  /// true: the surviving weights of every token that lost an assignment are divided by their sum
  /// (kernels::renormalize_scale: a lone survivor gets weight 1, the base's route_scale is not
  /// kept for such a token); a token that lost nothing keeps its weights bit for bit, so
  /// DeepSpeed's top-2 gate (weights over the kept routes for every token) is a base with
  /// `renormalize = true` plus this. false (GShard, Switch): the surviving weights are left as
  /// they are.
  bool renormalize_after_drop = false;
};

/// What moe::capacity reports about a plan (moe::layer::policy_stats()).
struct capacity_stats {
  index capacity = 0;           ///< C, places per expert for this batch
  index dropped = 0;            ///< assignments dropped
  double dropped_fraction = 0;  ///< dropped / (kept + dropped) assignments (0 if none)
};

/// Switch/GShard expert capacity with token dropping, over any token-choice policy
/// (docs/routing-spec.md §5).
///
/// The base routes; then each expert accepts at most C assignments: by default
/// `C = ceil(capacity_factor · T · K / E)` (K = base.max_slots(); the ceiling is computed in
/// double with the guard of errata 1), or the rule of `options.convention` (flaxformer's
/// `round(cf · T / E)`, expert choice's floor), then clamped to `[min_capacity, T]`. Assignments are served slot-major: every slot-0
/// assignment before any slot-1 assignment; inside a slot, tokens in ascending index (or by
/// descending top-1 gate score with batch_prioritized: `plan.top_score(t)`, which every built-in
/// token-choice router records, or the slot-0 weight for a base that records none). Each expert counts the assignments it is
/// offered; one whose position (0-based) is `< C` is kept, the others are dropped, and the count
/// grows either way (GShard / HF cumulative-sum semantics). A dropped assignment becomes
/// `moe::no_expert` with weight 0 (it contributes nothing); a token left with no assignment has
/// MoE output 0. `plan.dropped()` and `policy_stats()` report the drops.
///
/// Auxiliary losses are defined on the assignments *before* dropping: use route() with a
/// `before_drop` plan, or moe::switch_load_balance_loss, which counts from the logits.
///
/// Not batch invariant by design (a token's slots depend on the tokens before it).
///
/// @tparam Base any token-choice moe::router (moe::top_k<>, moe::group_limited<>, ...).
template <class Base>
class capacity {
  static_assert(router<Base>,
                "moe::capacity<Base>: Base must model moe::router (e.g. moe::top_k<moe::softmax_gate>)");

 public:
  using router_type = capacity;
  using base_type = Base;
  /// A token's route depends on the other tokens of the batch.
  static constexpr bool needs_whole_batch = true;

  explicit capacity(Base base, capacity_options options = {}) : m_base(std::move(base)), m_options(options) {
    constexpr const char* where = "moe::capacity";
    if (!(m_options.capacity_factor > 0.0) || !std::isfinite(m_options.capacity_factor)) {
      detail::fail_parameter(error_id::config, where, "capacity_factor", "finite and > 0", m_options.capacity_factor);
    }
    if (m_options.min_capacity < 0) {
      detail::fail_parameter(error_id::config, where, "min_capacity", ">= 0", m_options.min_capacity);
    }
  }

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }
  [[nodiscard]] Base& base() noexcept { return m_base; }
  [[nodiscard]] const capacity_options& options() const noexcept { return m_options; }

  /// Places per expert for a batch of T tokens: `min(max(C, min_capacity), T)` with C from the
  /// convention (`ceil(cf·T·K/E)` by default), or T when drop_tokens is false.
  [[nodiscard]] index expert_capacity(index T) const noexcept {
    if (!m_options.drop_tokens) return T;
    const index c = convention_capacity(m_options.convention, m_options.capacity_factor, T, max_slots(), num_experts());
    return std::min(std::max(c, m_options.min_capacity), T);
  }

  /// Routes `x [T × d]` with the base, then applies the capacity.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    m_base.route(x, ctx, plan, ws);
    apply(plan, ws);
  }

  /// As route(), and copies the base plan before dropping into `before_drop` (for the losses).
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws,
             routing_plan& before_drop) const {
    m_base.route(x, ctx, plan, ws);
    before_drop = plan;
    apply(plan, ws);
  }

  /// Routes precomputed logits `z [T × E]` with the base, then applies the capacity.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws) const
    requires requires(const Base& b, const_matrix_map<float> m, routing_plan& p, workspace& w) {
      b.route_logits(m, p, w);
    }
  {
    m_base.route_logits(z, plan, ws);
    apply(plan, ws);
  }

  /// Applies the capacity to a token-choice plan in place (drops, optional renormalisation) and
  /// adds the number of dropped assignments to `plan.dropped()`.
  void apply(routing_plan& plan, workspace& ws) const {
    const index T = plan.num_tokens(), K = plan.max_slots(), E = plan.num_experts();
    if (T == 0 || !m_options.drop_tokens) return;
    const index C = expert_capacity(T);
    index* count = ws.take_zeroed<index>(static_cast<std::size_t>(E));
    auto* order = ws.take<std::int32_t>(static_cast<std::size_t>(T));
    for (index t = 0; t < T; ++t) order[t] = static_cast<std::int32_t>(t);
    if (m_options.priority == capacity_priority::batch_prioritized && K > 0) {
      // The top-1 gate score (the spec's order); the slot-0 weight when the base records none.
      const bool top = plan.has_top_score();
      const auto key = [&](std::int32_t t) { return top ? plan.top_score(t) : plan.weight(t, 0); };
      std::sort(order, order + T, [&](std::int32_t a, std::int32_t b) {
        const float wa = key(a), wb = key(b);
        return wa > wb || (wa == wb && a < b);
      });
    }
    auto* lost = ws.take_zeroed<std::uint8_t>(static_cast<std::size_t>(T));  // token lost an assignment
    index dropped = 0;
    for (index s = 0; s < K; ++s) {
      for (index i = 0; i < T; ++i) {
        const index t = order[i];
        const std::int32_t e = plan.expert(t, s);
        if (e == no_expert) continue;
        if (count[e]++ >= C) {
          plan.set(t, s, no_expert, 0.0f);
          lost[t] = 1;
          ++dropped;
        }
      }
    }
    if (m_options.renormalize_after_drop) {
      // Only the tokens that lost something; dropped slots hold weight 0 and stay 0.
      for (index t = 0; t < T; ++t) {
        if (lost[t]) kernels::renormalize_scale(plan.weights(t).data(), K, true, 1.0f);
      }
      plan.invalidate();
    }
    plan.add_dropped(dropped);
  }

  /// Capacity and drops of a plan this policy produced.
  [[nodiscard]] capacity_stats policy_stats(const routing_plan& plan) const {
    capacity_stats s;
    s.capacity = expert_capacity(plan.num_tokens());
    s.dropped = plan.dropped();
    index kept = 0;
    for (const std::int32_t e : plan.all_experts()) kept += e != no_expert;
    if (kept + s.dropped > 0) s.dropped_fraction = static_cast<double>(s.dropped) / static_cast<double>(kept + s.dropped);
    return s;
  }

 private:
  Base m_base;
  capacity_options m_options;
};

static_assert(router<capacity<top_k<softmax_gate>>>);

}  // namespace moe
