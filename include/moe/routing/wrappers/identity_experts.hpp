// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/plan.hpp"

namespace moe {

/// Identity ("zero-computation") experts, LongCat-Flash's (docs/routing-spec.md §18.1): the base
/// router scores `E + m` experts, the last `m` of which are identities; a token that chooses one
/// adds `w · x_t` to its output instead of an expert's, and the slot takes no expert time. The
/// base's weights are kept as they are (normalisation, route_scale and selection bias included:
/// the identity columns compete and are weighed like the others), so this differs from
/// moe::null_experts (AdaMoE), whose null slots add 0 and are dropped before the weights.
///
/// The slots of identity choices become moe::no_expert and their weights are summed, in slot
/// order, into routing_plan::identity_weight(t), which the layer adds (`y_t += w_id · x_t`, before
/// the output scale) on every device. `m = 0` is the base router itself.
///
/// @tparam Base any moe::router over `E + m` experts (e.g. moe::group_limited<moe::sigmoid_gate>
///         with a selection bias of `E + m` values, as LongCat-Flash routes).
template <router Base>
class identity_experts {
 public:
  using router_type = identity_experts;
  using base_type = Base;
  static constexpr bool needs_whole_batch = moe::needs_whole_batch<Base>();

  /// Wraps a base whose last `m` experts are identities (0 <= m < base.num_experts()).
  identity_experts(Base base, index m) : m_base(std::move(base)), m_identities(m) {
    detail::check_range<index>("moe::identity_experts", "m", m, 0, m_base.num_experts() - 1);
  }

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts() - m_identities; }
  [[nodiscard]] index identities() const noexcept { return m_identities; }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }

  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    m_base.route(x, ctx, plan, ws);
    move_identities(plan);
  }
  /// Routes raw logits `z [T × (E + m)]` where the base can.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws) const
    requires requires(const Base& b) { b.route_logits(z, plan, ws); }
  {
    m_base.route_logits(z, plan, ws);
    move_identities(plan);
  }

 private:
  void move_identities(routing_plan& plan) const {
    const index E = num_experts();
    for (index t = 0; t < plan.num_tokens(); ++t) {
      for (index s = 0; s < plan.max_slots(); ++s) {
        const std::int32_t e = plan.expert(t, s);
        if (e == no_expert || e < E) continue;
        plan.add_identity(t, plan.weight(t, s));
        plan.set(t, s, no_expert, 0.0f);
      }
    }
    plan.set_num_experts(E);
  }

  Base m_base;
  index m_identities;
};

}  // namespace moe
