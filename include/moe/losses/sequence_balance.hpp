// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/common.hpp"

namespace moe {

/// Options of moe::sequence_balance_loss.
struct sequence_balance_options {
  /// Loss coefficient (DeepSeek-V3: 1e-4, "extremely small by design").
  double alpha = 1e-4;
  /// The per-token distribution: normalised sigmoid scores (DeepSeek-V3, default) or softmax.
  loss_scores scores = loss_scores::normalized_sigmoid;
};

namespace detail {
template <class L, class Scalar>
double sequence_balance_impl(const Eigen::DenseBase<L>& logits, const routing_plan& plan, const route_context& ctx,
                             const sequence_balance_options& o, matrix_map<Scalar>* grad) {
  constexpr const char* where = "moe::sequence_balance_loss";
  check_coefficient(where, "options.alpha", o.alpha);
  check_loss_plan(where, logits, plan);
  if (grad) check_loss_grad(where, logits, *grad);
  check_loss_logits(where, logits);
  const index T = logits.rows(), E = logits.cols(), K = plan.max_slots();
  if (T == 0 || K == 0) {
    if (grad) grad->setZero();
    return 0.0;
  }
  // Sequences by the routers' rule (core/sequences.hpp); empty ones hold no token and are not
  // counted in the average.
  check_sequence_starts(ctx.sequence_starts, T, where);
  const index n_all = sequence_count(ctx.sequence_starts);
  index n_nonempty = 0;
  for (index q = 0; q < n_all; ++q) {
    const auto [begin, end] = sequence_range(ctx.sequence_starts, q, T);
    n_nonempty += end > begin;
  }
  const double n_seq = static_cast<double>(n_nonempty);
  std::vector<double> f(static_cast<std::size_t>(E));
  double value = 0;
  for (index q = 0; q < n_all; ++q) {
    const auto [begin, end] = sequence_range(ctx.sequence_starts, q, T);
    if (end == begin) continue;
    const double len = static_cast<double>(end - begin);
    std::fill(f.begin(), f.end(), 0.0);
    for (index t = begin; t < end; ++t) {
      for (index s = 0; s < K; ++s) {
        const std::int32_t e = plan.expert(t, s);
        if (e != no_expert) f[static_cast<std::size_t>(e)] += static_cast<double>(E) / (static_cast<double>(K) * len);
      }
    }
    value += balance_term(logits, begin, end, f.data(), o.alpha / n_seq, o.scores, grad);
  }
  return value;
}
}  // namespace detail

/// DeepSeek-V3 complementary sequence-wise balance loss (docs/routing-spec.md §4), per sequence of length L
/// then averaged over the non-empty sequences of `ctx.sequence_starts` (empty: the batch is one
/// sequence; the starts follow the routers' rules of core/sequences.hpp, empty sequences allowed):
/// ```
/// s~_{t,e} = s_{t,e} / Σ_j s_{t,j}    (s = sigmoid(z), the unbiased scores)
/// P_e = (1/L) Σ_t s~_{t,e},  f_e = E / (K·L) · Σ_t 1[e ∈ S_t],  L_bal = alpha · Σ_e f_e P_e
/// ```
/// `S_t` are the active slots of the plan (K = plan.max_slots()). Computed in double; T = 0 gives
/// 0; NaN logits and malformed sequence starts throw moe::error.
template <class L>
double sequence_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan, const route_context& ctx = {},
                             const sequence_balance_options& options = {}) {
  return detail::sequence_balance_impl<L, typename L::Scalar>(logits, plan, ctx, options, nullptr);
}

/// As above, and writes `∂L_bal/∂z [T × E]` into `grad` (overwritten): through `P` (and s~) only,
/// `f` is a constant: `alpha/(n_seq·L) · s_j(1-s_j)/Σs · (f_j - Σ_e f_e s~_e)`.
template <class L>
double sequence_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan, const route_context& ctx,
                             const sequence_balance_options& options, matrix_map<typename L::Scalar> grad) {
  return detail::sequence_balance_impl(logits, plan, ctx, options, &grad);
}

}  // namespace moe
