// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/common.hpp"
#include "moe/losses/lbl_normalization.hpp"

namespace moe {

/// Which assignments the load-balancing loss counts.
enum class lbl_count {
  all_slots,  ///< every active slot of every token (default)
  first_slot  ///< only slot 0, the first choice (GShard / DeepSpeed top-2); K is then 1 in the normalisation
};

/// Options of moe::load_balance_loss.
struct load_balance_options {
  /// Loss coefficient (Switch 0.01; HF Mixtral default 0.001).
  double alpha = 0.01;
  lbl_normalization normalization = lbl_normalization::per_assignment;
  lbl_count count = lbl_count::all_slots;
  /// The distribution averaged into `P`: softmax (default) or normalised sigmoid scores (§3).
  loss_scores scores = loss_scores::softmax;
};

namespace detail {
template <class L, class Scalar>
double load_balance_impl(const Eigen::DenseBase<L>& logits, const routing_plan& plan,
                         const load_balance_options& o, matrix_map<Scalar>* grad) {
  constexpr const char* where = "moe::load_balance_loss";
  check_coefficient(where, "options.alpha", o.alpha);
  check_loss_plan(where, logits, plan);
  if (grad) check_loss_grad(where, logits, *grad);
  check_loss_logits(where, logits);
  const index T = logits.rows(), E = logits.cols();
  if (T == 0) return 0.0;
  const bool first = o.count == lbl_count::first_slot;
  const index K = first ? std::min<index>(plan.max_slots(), 1) : plan.max_slots();
  std::vector<double> f(static_cast<std::size_t>(E), 0.0);
  for (index t = 0; t < T; ++t) {
    for (index s = 0; s < K; ++s) {
      const std::int32_t e = plan.expert(t, s);
      if (e != no_expert) f[static_cast<std::size_t>(e)] += 1.0;
    }
  }
  const double denom = static_cast<double>(T) * (o.normalization == lbl_normalization::per_assignment
                                                     ? static_cast<double>(std::max<index>(K, 1))
                                                     : 1.0);
  for (double& v : f) v /= denom;
  return balance_term(logits, 0, T, f.data(), o.alpha * static_cast<double>(E), o.scores, grad);
}

template <class L, class Scalar>
double switch_load_balance_impl(const Eigen::DenseBase<L>& logits, double alpha, matrix_map<Scalar>* grad) {
  constexpr const char* where = "moe::switch_load_balance_loss";
  check_coefficient(where, "alpha", alpha);
  if (grad) check_loss_grad(where, logits, *grad);
  check_loss_logits(where, logits);
  const auto& z = logits.derived();
  const index T = z.rows(), E = z.cols();
  if (T == 0) return 0.0;
  std::vector<double> f(static_cast<std::size_t>(E), 0.0);
  for (index t = 0; t < T; ++t) {
    index best = -1;  // argmax of the logits = argmax of the softmax; ties: lower index; -inf never
    double m = -std::numeric_limits<double>::infinity();
    for (index e = 0; e < E; ++e) {
      if (static_cast<double>(z(t, e)) > m) {
        m = static_cast<double>(z(t, e));
        best = e;
      }
    }
    if (best >= 0) f[static_cast<std::size_t>(best)] += 1.0 / static_cast<double>(T);
  }
  return balance_term(logits, 0, T, f.data(), alpha * static_cast<double>(E), loss_scores::softmax, grad);
}
}  // namespace detail

/// Load-balancing loss of docs/routing-spec.md §1.3, `L = alpha · E · Σ_e f_e P_e`, for any token-choice
/// plan: `P_e = (1/T) Σ_t p_{t,e}` (p = softmax of the logits, or normalised sigmoid scores) and
/// `f_e` the share of the plan's assignments that go to expert e (K = plan.max_slots()).
///
/// Count the assignments *before* any capacity dropping: hand in the plan of the un-dropped policy
/// (moe::capacity<Base>::route can write it too). Empty input (T = 0) gives 0. NaN logits throw.
/// `logits [T × E]` is any Eigen matrix or map of float or double; the loss is computed in double.
template <class L>
double load_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan,
                         const load_balance_options& options = {}) {
  return detail::load_balance_impl<L, typename L::Scalar>(logits, plan, options, nullptr);
}

/// As above, and writes the gradient `∂L/∂z [T × E]` into `grad` (overwritten; f held constant):
/// `alpha·E/T · p_{t,j} (f_j - Σ_i f_i p_{t,i})` for softmax scores.
template <class L>
double load_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan,
                         const load_balance_options& options, matrix_map<typename L::Scalar> grad) {
  return detail::load_balance_impl(logits, plan, options, &grad);
}

/// Switch top-1 load-balancing loss (Switch Transformer, docs/routing-spec.md §1.3 and §5):
/// `alpha · E · Σ_e f_e P_e` with `f_e` the share of tokens whose argmax logit is e (ties: lower
/// index; an all -inf row counts for nobody), computed from the logits alone, hence always before
/// capacity dropping. T = 0 gives 0.
template <class L>
double switch_load_balance_loss(const Eigen::DenseBase<L>& logits, double alpha = 0.01) {
  return detail::switch_load_balance_impl<L, typename L::Scalar>(logits, alpha, nullptr);
}

/// As above, and writes `∂L/∂z [T × E]` into `grad` (overwritten).
template <class L>
double switch_load_balance_loss(const Eigen::DenseBase<L>& logits, double alpha, matrix_map<typename L::Scalar> grad) {
  return detail::switch_load_balance_impl(logits, alpha, &grad);
}

/// DiT-MoE's expert-level balance loss (docs/routing-spec.md §12): `alpha · Σ_e P_e · E·count_e/(T·k)`,
/// which is the per-assignment, all-slots load_balance_loss with softmax scores.
template <class L>
double expert_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan, double alpha = 0.01) {
  return load_balance_loss(logits, plan, {.alpha = alpha});
}

/// As above, and writes `∂L/∂z [T × E]` into `grad` (overwritten).
template <class L>
double expert_balance_loss(const Eigen::DenseBase<L>& logits, const routing_plan& plan, double alpha,
                           matrix_map<typename L::Scalar> grad) {
  return load_balance_loss(logits, plan, {.alpha = alpha}, grad);
}

}  // namespace moe
