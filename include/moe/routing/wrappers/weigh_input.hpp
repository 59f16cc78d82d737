// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/plan.hpp"

namespace moe {

/// Combine weights on the experts' input (Llama 4, docs/routing-spec.md §18.2): the plan of the
/// base router is marked routing_plan::input_weighted(), so that a slot contributes
/// `Expert_e(w · x_t)` instead of `w · Expert_e(x_t)` on every device. Llama 4 pairs it with
/// the sigmoid of the top-1 logit; any router can be wrapped.
template <router Base>
class weigh_input {
 public:
  using router_type = weigh_input;
  using base_type = Base;
  static constexpr bool needs_whole_batch = moe::needs_whole_batch<Base>();

  explicit weigh_input(Base base) : m_base(std::move(base)) {}

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }

  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    m_base.route(x, ctx, plan, ws);
    plan.set_input_weighted(true);
  }
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws) const
    requires requires(const Base& b) { b.route_logits(z, plan, ws); }
  {
    m_base.route_logits(z, plan, ws);
    plan.set_input_weighted(true);
  }

 private:
  Base m_base;
};

}  // namespace moe
