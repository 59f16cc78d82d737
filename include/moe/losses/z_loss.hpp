// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/common.hpp"

namespace moe {

namespace detail {
template <class L, class Scalar>
double router_z_loss_impl(const Eigen::DenseBase<L>& logits, double c_z, matrix_map<Scalar>* grad) {
  constexpr const char* where = "moe::router_z_loss";
  constexpr double inf = std::numeric_limits<double>::infinity();
  check_coefficient(where, "c_z", c_z);
  if (grad) check_loss_grad(where, logits, *grad);
  check_loss_logits(where, logits);
  const auto& z = logits.derived();
  const index T = z.rows(), E = z.cols();
  if (T == 0) return 0.0;
  double total = 0;
  for (index t = 0; t < T; ++t) {
    double m = -inf;
    for (index e = 0; e < E; ++e) m = std::max(m, static_cast<double>(z(t, e)));
    if (m == inf) {
      throw_error(error_id::input, concat(where, ": parameter 'logits' has a +inf in row ", t,
                                          "; the z-loss of such a token is infinite"));
    }
    if (m == -inf) {  // degenerate token: no distribution; its term (and gradient) is 0
      if (grad) {
        for (index e = 0; e < E; ++e) (*grad)(t, e) = Scalar(0);
      }
      continue;
    }
    double sum = 0;
    for (index e = 0; e < E; ++e) sum += std::exp(static_cast<double>(z(t, e)) - m);
    const double lse = m + std::log(sum);
    total += lse * lse;
    if (grad) {
      const double scale = c_z * 2.0 / static_cast<double>(T) * lse;
      for (index e = 0; e < E; ++e) {
        (*grad)(t, e) = static_cast<Scalar>(scale * std::exp(static_cast<double>(z(t, e)) - m) / sum);
      }
    }
  }
  return c_z * total / static_cast<double>(T);
}
}  // namespace detail

/// Router z-loss (ST-MoE, docs/routing-spec.md §1.3): `L_z = c_z · (1/T) Σ_t (logsumexp_e z_{t,e})²`,
/// computed in double (stable log-sum-exp). A token whose logits are all -inf contributes 0; a +inf
/// logit throws moe::error (its z-loss is infinite); NaN throws. T = 0 gives 0.
/// `logits [T × E]` is any Eigen matrix or map of float or double.
template <class L>
double router_z_loss(const Eigen::DenseBase<L>& logits, double c_z = 1e-3) {
  return detail::router_z_loss_impl<L, typename L::Scalar>(logits, c_z, nullptr);
}

/// As above, and writes `∂L_z/∂z = c_z · (2/T) · LSE_t · softmax(z_t)` into `grad [T × E]` (overwritten).
template <class L>
double router_z_loss(const Eigen::DenseBase<L>& logits, double c_z, matrix_map<typename L::Scalar> grad) {
  return detail::router_z_loss_impl(logits, c_z, &grad);
}

}  // namespace moe
