// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Mixture-of-Depths auxiliary loss (docs/routing-spec.md §13.2): binary cross-entropy of the router
// weights, read as logits, against top-C membership, which trains the causal decision rule
// `sigmoid(r) > 0.5`. Computed in double.

#include <algorithm>
#include <cmath>
#include <span>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/losses/detail/row_math.hpp"

namespace moe {

/// Coefficient of the MoD auxiliary loss [OURS: the paper's value is not available; it reports
/// that the loss barely affects the language-modelling objective].
inline constexpr double mod_aux_loss_coefficient = 0.01;

namespace detail {

template <class S>
double mod_aux_loss_impl(std::span<const S> r, std::span<const S> target, std::span<S> grad) {
  constexpr const char* where = "moe::mod_aux_loss";
  const auto T = static_cast<index>(r.size());
  check_extent(where, "target.size()", static_cast<index>(target.size()), T);
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), T);
  double total = 0;
  for (index t = 0; t < T; ++t) {
    const auto i = static_cast<std::size_t>(t);
    const double v = r[i], y = target[i];
    if (!std::isfinite(v)) fail_parameter(error_id::input, where, concat("r[", t, "]"), "finite", v);
    if (!(y >= 0.0 && y <= 1.0)) fail_parameter(error_id::input, where, concat("target[", t, "]"), "in [0, 1]", y);
    // BCE(sigmoid(v), y) = softplus(v) - y v.
    total += loss_math::softplus(v) - y * v;
    if (!grad.empty()) grad[i] = static_cast<S>((loss_math::sigmoid(v) - y) / static_cast<double>(T));
  }
  return T > 0 ? total / static_cast<double>(T) : 0.0;
}

}  // namespace detail

/// MoD auxiliary loss `mean_t BCE(sigmoid(r_t), target_t)` (targets 1 for the tokens that entered
/// the layer, 0 otherwise; moe::executed_mask writes them from a plan). Writes
/// `dL/dr_t = (sigmoid(r_t) - target_t) / T` to `grad` when it is not empty. T = 0 gives 0.
/// Throws moe::error naming 'r[t]' (non-finite), 'target[t]' (outside [0, 1]) or a size.
inline double mod_aux_loss(std::span<const float> r, std::span<const float> target, std::span<float> grad = {}) {
  return detail::mod_aux_loss_impl<float>(r, target, grad);
}
/// Double-precision overload.
inline double mod_aux_loss(std::span<const double> r, std::span<const double> target, std::span<double> grad = {}) {
  return detail::mod_aux_loss_impl<double>(r, target, grad);
}

}  // namespace moe
