// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <string_view>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// What AdaMoE reports about a plan routed with null experts (docs/routing-spec.md §7).
struct null_experts_stats {
  index tokens = 0;                ///< T
  index slots = 0;                 ///< k: slots per token, null slots included
  double mean_true_experts = 0;    ///< k_eff: mean true experts per token (0 if T = 0)
  /// Expert FLOPs saved against plain top-k with the same k: `1 - k_eff / k` (0 if T = 0).
  double flops_saved = 0;
  index tokens_without_expert = 0; ///< tokens whose every slot is null (their MoE output is 0)
};

/// AdaMoE null experts (docs/routing-spec.md §7): `m` extra score columns that compute nothing, so the
/// number of true experts per token adapts (`k_eff(t)` in `[0, k]`).
///
/// The base policy scores `E + m` columns: the E true experts, then the m null experts (router
/// rows `W_null [m × d]`). It gates (softmax over all E + m columns for moe::top_k<softmax_gate>)
/// and selects k columns, null slots counting towards k. Null slots become moe::no_expert; the
/// base's weigh stage then runs on the selected true experts only (null scores are zeroed first),
/// so with `renormalize = true` (AdaMoE) the weights are renormalised over the selected true
/// experts. A token whose every slot is null routes nowhere: its MoE output is exactly 0.
/// Ties between a true and a null column go to the true expert (lower column). `m = 0` is the
/// base policy itself. The null-aware balance loss is moe::null_experts_balance_loss
/// (losses/null_experts.hpp).
///
/// @tparam Base a moe::token_choice_policy over `E + m` columns, e.g. moe::top_k<softmax_gate>.
template <token_choice_policy Base>
class null_experts {
 public:
  using router_type = null_experts;
  using base_type = Base;
  /// Routes each token independently of the others.
  static constexpr bool needs_whole_batch = false;

  /// Wraps a base whose last `m` columns are the null experts.
  null_experts(Base base, index m) : m_base(std::move(base)), m_nulls(m) {
    constexpr const char* where = "moe::null_experts";
    const index columns = m_base.columns();
    detail::check_range<index>(where, "m", m_nulls, 0, columns - 1);
    m_true = m_base.num_experts() - m_nulls;
    if (m_true < 1) {
      detail::fail_parameter(error_id::config, where, "m", detail::concat("< base.num_experts() = ", m_base.num_experts()),
                             m_nulls);
    }
    for (index c = 0; c < columns - m_nulls; ++c) {
      const std::int32_t e = m_base.column_expert(c);
      if (e != no_expert && (e < 0 || e >= m_true)) {
        detail::fail_parameter(error_id::config, where, detail::concat("base.column_expert(", c, ")"),
                               detail::concat("in [0, ", m_true, ") or moe::no_expert"), e);
      }
    }
  }

  /// Options of the base policy (moe::top_k_options for moe::top_k).
  using base_options = detail::token_choice::options_of_t<Base>;

  /// Builds the base from the true-expert rows `w_true [E × d]` and the null rows
  /// `w_null [m × d]` (concatenated, so one GEMM computes all E + m logits), with the base's
  /// options: `moe::null_experts<moe::top_k<>>(w_true, w_null, {.k = 4, .renormalize = true})`.
  null_experts(const_matrix_map<float> w_true, const_matrix_map<float> w_null, base_options options)
    requires std::constructible_from<Base, const_matrix_map<float>, base_options>
      : null_experts(Base(concatenate(w_true, w_null), std::move(options)), w_null.rows()) {}

  /// Convenience: row-major Eigen matrices.
  template <class T, class N>
    requires std::constructible_from<Base, const_matrix_map<float>, base_options>
  null_experts(const Eigen::DenseBase<T>& w_true, const Eigen::DenseBase<N>& w_null, base_options options)
      : null_experts(view(w_true), view(w_null), std::move(options)) {}

  /// True experts E (what the expert bank holds).
  [[nodiscard]] index num_experts() const noexcept { return m_true; }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  /// k: slots per token, null slots included.
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  /// Null experts m.
  [[nodiscard]] index num_null_experts() const noexcept { return m_nulls; }
  [[nodiscard]] const Base& base() const noexcept { return m_base; }

  /// Routes `x [T × d]` into `plan` (`[T × k]` over the E true experts), on up to
  /// `ctx.threads` threads.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    route_by_stages(*this, x, ctx, plan, ws, "moe::null_experts::route");
  }

  /// Routes precomputed raw logits `z [T × (E + m)]` (true experts first; copied; the base's
  /// temperature is applied once, as route() applies it).
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    route_logits_by_stages(*this, z, plan, ws, "moe::null_experts::route_logits", ctx);
  }

  /// Mean true experts per token and the FLOPs saved against plain top-k with the same k.
  [[nodiscard]] null_experts_stats policy_stats(const routing_plan& plan) const {
    null_experts_stats s;
    s.tokens = plan.num_tokens();
    s.slots = max_slots();
    index active = 0;
    for (index t = 0; t < s.tokens; ++t) {
      const index a = plan.active_slots(t);
      active += a;
      s.tokens_without_expert += a == 0;
    }
    if (s.tokens > 0) {
      s.mean_true_experts = static_cast<double>(active) / static_cast<double>(s.tokens);
      s.flops_saved = 1.0 - s.mean_true_experts / static_cast<double>(s.slots);
    }
    return s;
  }

  // ---- Stages (moe::token_choice_policy): the base's, over E + m columns, except weigh.

  /// E + m: the base's columns, true experts first.
  [[nodiscard]] index columns() const noexcept { return m_base.columns(); }
  /// The base's logits `z [T × (E + m)]`.
  void logits(const_matrix_map<float> x, float* z, index ldz, workspace& ws) const { m_base.logits(x, z, ldz, ws); }
  /// The base's packed weight `[(E + m) × d]`, when its logits are linear (threaded stage 1).
  [[nodiscard]] const kernels::packed_weights& logits_weight() const noexcept
    requires detail::token_choice::linear_logits<Base>
  {
    return m_base.logits_weight();
  }
  /// The base's router input, when it has one.
  void input_rows(const_matrix_map<float> x, index begin, index end, float* out) const noexcept
    requires detail::token_choice::transformed_input<Base>
  {
    m_base.input_rows(x, begin, end, out);
  }
  /// The base's temperature (scale_logits) on raw logits, if the base has one.
  void scale_logits(float* z, index rows, index ldz) const { detail::token_choice::scale(m_base, z, rows, ldz); }
  /// The base's NaN policy.
  void prepare_row(float* z, index n, index t) const { m_base.prepare_row(z, n, t); }
  /// The base's NaN policy, an error naming `where` and `param` when the base supports it.
  void prepare_row(float* z, index n, index t, std::string_view where, std::string_view param) const {
    detail::token_choice::prepare(m_base, z, n, t, where, param);
  }
  /// The base's gate over all E + m columns (softmax over E + m for moe::top_k<softmax_gate>).
  bool gate_row(const float* z, float* s) const { return m_base.gate_row(z, s); }
  /// The base's entropy of the E + m scores.
  [[nodiscard]] float row_entropy(const float* s, float* scratch) const { return m_base.row_entropy(s, scratch); }
  /// The base's selection of k columns, null columns competing with the true ones.
  index select_row(const float* z, const float* s, std::int32_t* idx, float* scratch) const {
    return m_base.select_row(z, s, idx, scratch);
  }
  /// Zeroes the null scores, then weighs with the base: the weights of the selected true experts
  /// are what the base gives when the null experts carry no score (renormalised over the true
  /// experts with `renormalize = true`); null slots get 0.
  void weigh_row(float* s, const std::int32_t* idx, index count, float* w) const {
    const index first_null = columns() - m_nulls;
    for (index c = first_null; c < columns(); ++c) s[c] = 0.0f;
    m_base.weigh_row(s, idx, count, w);
    for (index slot = 0; slot < count; ++slot) {
      if (idx[slot] >= first_null) w[slot] = 0.0f;
    }
  }
  /// moe::no_expert for a null column, else the base's expert.
  [[nodiscard]] std::int32_t column_expert(index c) const noexcept {
    return c >= columns() - m_nulls ? no_expert : m_base.column_expert(c);
  }

 private:
  static row_matrix<float> concatenate(const const_matrix_map<float>& w_true, const const_matrix_map<float>& w_null) {
    detail::check_extent("moe::null_experts", "w_null.cols()", w_null.cols(), w_true.cols());
    row_matrix<float> w(w_true.rows() + w_null.rows(), w_true.cols());  // [(E + m) × d]
    w.topRows(w_true.rows()) = w_true;
    w.bottomRows(w_null.rows()) = w_null;
    return w;
  }

  Base m_base;
  index m_nulls;
  index m_true = 0;
};

static_assert(router<null_experts<top_k<softmax_gate>>>);
static_assert(token_choice_policy<null_experts<top_k<softmax_gate>>>);

}  // namespace moe
