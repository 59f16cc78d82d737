// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Shared pieces of the balance losses: the per-token distribution a balance loss averages, its
// backward pass, and the argument checks. Losses compute in double whatever the logits' type
// (they run once per step on [T × E] values, so the cost is small and the results are clean);
// the double-precision row math (softmax, sigmoid, softplus, top-k) is detail/row_math.hpp, the
// one set every loss uses.

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/detail/row_math.hpp"

namespace moe {

/// The per-token distribution over experts that a balance loss averages into `P`.
enum class loss_scores {
  softmax,            ///< `p = softmax(z)` (Switch, Mixtral, OLMoE, DiT-MoE)
  normalized_sigmoid  ///< `p = sigmoid(z) / Σ_e sigmoid(z_e)` (DeepSeek-V3, docs/routing-spec.md §3/§4); 0 if the sum is 0
};

namespace detail {

/// Distribution `p [E]` of one row `z [E]` (double) of logits, and what its backward pass needs
/// in `aux` (`aux[0]` = Σ sigmoid for normalized_sigmoid). Follows docs/routing-spec.md §1.2 for ±inf
/// (loss_math::softmax): softmax shares the mass among +inf logits and gives 0 to -inf ones; an
/// all -inf row gives p = 0. Returns loss_math::softmax's state for softmax (0 degenerate, 2
/// saturated: a +inf logit, p a constant step; 1 otherwise) and 1 for normalized_sigmoid.
inline int loss_row_scores(const double* z, index E, loss_scores kind, double* p, double* aux) noexcept {
  if (kind == loss_scores::softmax) return loss_math::softmax(z, E, p);
  double total = 0;
  for (index e = 0; e < E; ++e) total += p[e] = loss_math::sigmoid(z[e]);
  aux[0] = total;
  for (index e = 0; e < E; ++e) p[e] = total > 0 ? p[e] / total : 0.0;
  return 1;
}

/// Backward pass of loss_row_scores: `g_j = scale · Σ_i v_i ∂p_i/∂z_j`, i.e.
/// softmax: `scale · p_j (v_j - Σ_i v_i p_i)`, and 0 on a saturated row (`state` 2: a +inf
/// logit makes p a constant step) or a degenerate one;
/// normalized sigmoid: `scale · s_j (1 - s_j) / S · (v_j - Σ_i v_i p_i)` with `s_j = S p_j`.
template <class Out>
void loss_row_backward(loss_scores kind, int state, const double* p, const double* aux, const double* v, index E,
                       double scale, Out&& g) {
  double dot = 0;
  for (index e = 0; e < E; ++e) dot += v[e] * p[e];
  for (index e = 0; e < E; ++e) {
    double d = 0;
    if (kind == loss_scores::softmax) {
      d = state == 1 ? p[e] * (v[e] - dot) : 0.0;
    } else if (aux[0] > 0) {
      const double s = p[e] * aux[0];
      d = s * (1.0 - s) / aux[0] * (v[e] - dot);
    }
    g(e) = static_cast<std::decay_t<decltype(g(e))>>(scale * d);
  }
}

/// Checks the logits of a loss: no NaN (they would make the loss NaN).
template <class L>
void check_loss_logits(const char* where, const Eigen::DenseBase<L>& logits) {
  static_assert(std::is_floating_point_v<typename L::Scalar>,
                "moe losses: the logits must be float or double");
  const auto& z = logits.derived();
  for (index t = 0; t < z.rows(); ++t) {
    for (index e = 0; e < z.cols(); ++e) {
      if (std::isnan(z(t, e))) {
        throw_error(error_id::input, concat(where, ": parameter 'logits' has a NaN at (", t, ", ", e,
                                            "); expected finite or ±inf logits"));
      }
    }
  }
}

/// Checks that a plan matches logits `[T × E]`.
template <class L>
void check_loss_plan(const char* where, const Eigen::DenseBase<L>& logits, const routing_plan& plan) {
  check_extent(where, "plan.num_tokens()", plan.num_tokens(), logits.rows());
  check_extent(where, "plan.num_experts()", plan.num_experts(), logits.cols());
}

/// Checks that a gradient output matches logits `[T × E]`.
template <class L, class Scalar>
void check_loss_grad(const char* where, const Eigen::DenseBase<L>& logits, const matrix_map<Scalar>& grad) {
  check_extent(where, "grad.rows()", grad.rows(), logits.rows());
  check_extent(where, "grad.cols()", grad.cols(), logits.cols());
}

/// Checks a loss coefficient (finite).
inline void check_coefficient(const char* where, const char* param, double value) {
  if (!std::isfinite(value)) fail_parameter(error_id::config, where, param, "finite", value);
}

/// The common core of the balance losses over the rows `[begin, end)` of `logits [T × E]`:
/// returns `scale · Σ_e f_e P_e` with `P_e = (1/L) Σ_t p_{t,e}` (L = end - begin) and, if `grad`
/// is given, writes its rows `t` = `(scale / L) · J_tᵀ f` (f is treated as a constant).
template <class L, class Scalar>
double balance_term(const Eigen::DenseBase<L>& logits, index begin, index end, const double* f, double scale,
                    loss_scores kind, matrix_map<Scalar>* grad) {
  const auto& z = logits.derived();
  const index E = z.cols(), n = end - begin;
  if (n <= 0) return 0.0;
  std::vector<double> row(static_cast<std::size_t>(E)), p(static_cast<std::size_t>(E)),
      P(static_cast<std::size_t>(E), 0.0);
  double aux = 0;
  for (index t = begin; t < end; ++t) {
    for (index e = 0; e < E; ++e) row[static_cast<std::size_t>(e)] = static_cast<double>(z(t, e));
    const int state = loss_row_scores(row.data(), E, kind, p.data(), &aux);
    for (index e = 0; e < E; ++e) P[static_cast<std::size_t>(e)] += p[static_cast<std::size_t>(e)];
    if (grad) {
      loss_row_backward(kind, state, p.data(), &aux, f, E, scale / static_cast<double>(n),
                        [&](index e) -> Scalar& { return (*grad)(t, e); });
    }
  }
  double value = 0;
  for (index e = 0; e < E; ++e) value += f[e] * P[static_cast<std::size_t>(e)];
  return scale * value / static_cast<double>(n);
}

}  // namespace detail
}  // namespace moe
