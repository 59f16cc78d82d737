// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include <Eigen/Core>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/losses/detail/row_math.hpp"
#include "moe/losses/lbl_normalization.hpp"

namespace moe {

/// Options of moe::null_experts_balance_loss.
struct null_experts_balance_options {
  /// `aux_coef` (AdaMoE's Mixtral recipe: 1e-4).
  double coefficient = 1e-4;
  /// Null experts share their load: each null expert counts the mean of the null counts
  /// (AdaMoE's LoRA code and paper; false gives the plain loss over E + m experts).
  bool null_averaging = true;
  /// `per_assignment` (`f = c~ / Σ c~`) or `hf_mixtral` (`f = c~ / T`, k times larger).
  lbl_normalization normalization = lbl_normalization::per_assignment;
};

/// AdaMoE's null-aware load-balancing loss (docs/routing-spec.md §7):
/// `L = coefficient · (E + m) · Σ_j f_j · P_j` over the E true and m null columns, with
/// `P_j = mean_t softmax(z_t)_j`, `f_j` the normalised selection counts (null counts averaged
/// over the null experts when `null_averaging`).
///
/// @param logits `[T × (E + m)]` router logits (after any temperature), true experts first,
///               float or double; NaN is an error, ±inf follow docs/routing-spec.md §1.2.
/// @param num_true E, in [1, E + m]; the last `E + m - num_true` columns are null experts.
/// @param k slots per token, in [1, E + m]. The selection is recomputed from the logits with
///          the routers' rule (top-k of z, ties to the lower column, -inf never selected): the
///          selection of moe::null_experts<moe::top_k<softmax_gate>> without a selection bias.
///          The loss cannot take the routing plan instead: moe::null_experts writes a null slot
///          as moe::no_expert, so the plan no longer says which null expert was chosen, and the
///          null counts `c_j` (averaged or not) are part of the loss.
/// @param grad nullptr, or `[T × (E + m)]` row-major: receives `dL/dz`, the counts being
///             constants: `coefficient·((E+m)/T)·p_tj·(f_j − Σ_i f_i p_ti)` (0 on a row whose
///             maximum is +inf, where the softmax is a constant step).
/// @return the loss, computed in double; 0 for T = 0.
template <class Derived>
double null_experts_balance_loss(const Eigen::DenseBase<Derived>& logits, index num_true, index k,
                                 const null_experts_balance_options& options = {},
                                 typename Derived::Scalar* grad = nullptr) {
  using Scalar = typename Derived::Scalar;
  static_assert(detail::loss_math::is_loss_scalar<Scalar>,
                "moe::null_experts_balance_loss: logits must hold float or double");
  constexpr const char* where = "moe::null_experts_balance_loss";
  const auto z = view(logits);
  const index T = z.rows();
  const index C = z.cols();
  if (C < 1) detail::fail_parameter(error_id::shape, where, "logits.cols()", ">= 1", C);
  detail::check_range<index>(where, "num_true", num_true, 1, C);
  detail::check_range<index>(where, "k", k, 1, C);
  if (!std::isfinite(options.coefficient)) {
    detail::fail_parameter(error_id::config, where, "coefficient", "finite", options.coefficient);
  }
  if (T == 0) return 0.0;
  const index m = C - num_true;

  std::vector<double> p(static_cast<std::size_t>(T * C));  // [T × C]
  std::vector<int> state(static_cast<std::size_t>(T));
  std::vector<double> row(static_cast<std::size_t>(C));
  std::vector<std::int32_t> idx(static_cast<std::size_t>(k));
  std::vector<double> count(static_cast<std::size_t>(C), 0.0);  // c_j
  for (index t = 0; t < T; ++t) {
    for (index j = 0; j < C; ++j) {
      row[j] = static_cast<double>(z(t, j));
      detail::loss_math::check_not_nan(row[j], where, "logits", t, j);
    }
    state[t] = detail::loss_math::softmax(row.data(), C, p.data() + t * C);
    const index n = detail::loss_math::top_k(row.data(), C, k, idx.data());
    for (index s = 0; s < n; ++s) count[idx[s]] += 1.0;
  }
  if (options.null_averaging && m > 0) {
    double nulls = 0;
    for (index j = num_true; j < C; ++j) nulls += count[j];
    for (index j = num_true; j < C; ++j) count[j] = nulls / static_cast<double>(m);
  }
  double total = 0;
  for (double c : count) total += c;
  const double denominator = options.normalization == lbl_normalization::per_assignment ? total : static_cast<double>(T);
  std::vector<double> f(static_cast<std::size_t>(C), 0.0), P(static_cast<std::size_t>(C), 0.0);
  for (index j = 0; j < C; ++j) f[j] = denominator > 0 ? count[j] / denominator : 0.0;
  for (index t = 0; t < T; ++t) {
    for (index j = 0; j < C; ++j) P[j] += p[t * C + j];
  }
  double loss = 0;
  for (index j = 0; j < C; ++j) loss += f[j] * (P[j] / static_cast<double>(T));
  loss *= options.coefficient * static_cast<double>(C);

  if (grad != nullptr) {
    const double scale = options.coefficient * static_cast<double>(C) / static_cast<double>(T);
    for (index t = 0; t < T; ++t) {
      const double* pt = p.data() + t * C;
      double fp = 0;
      for (index j = 0; j < C; ++j) fp += f[j] * pt[j];
      for (index j = 0; j < C; ++j) {
        grad[t * C + j] = state[t] == 2 ? Scalar(0) : static_cast<Scalar>(scale * pt[j] * (f[j] - fp));
      }
    }
  }
  return loss;
}

}  // namespace moe
