// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// γ-MoD auxiliary loss (docs/routing-spec.md §13.3): cross-entropy of the shared router's 2-class logits
// against "processed" targets (question tokens, forced in, count as 1), mean over all tokens;
// the model sums it over the γ-MoD layers and multiplies by 0.01. Computed in double.

#include <algorithm>
#include <cmath>
#include <span>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/losses/detail/row_math.hpp"

namespace moe {

/// Coefficient of the γ-MoD auxiliary loss in the released code (`router_aux_loss_coef`).
inline constexpr double gamma_mod_aux_loss_coefficient = 0.01;

namespace detail {

template <class S>
double gamma_mod_aux_loss_impl(std::span<const S> logits, std::span<const S> target, std::span<S> grad) {
  constexpr const char* where = "moe::gamma_mod_aux_loss";
  const auto T = static_cast<index>(target.size());
  check_extent(where, "logits.size()", static_cast<index>(logits.size()), 2 * T);
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), 2 * T);
  double total = 0;
  for (index t = 0; t < T; ++t) {
    const double z0 = logits[static_cast<std::size_t>(2 * t)], z1 = logits[static_cast<std::size_t>(2 * t + 1)];
    const double y = target[static_cast<std::size_t>(t)];
    if (!std::isfinite(z0) || !std::isfinite(z1)) {
      fail_parameter(error_id::input, where, concat("logits[", 2 * t, "..", 2 * t + 1, "]"), "finite",
                     concat(z0, ", ", z1));
    }
    if (!(y >= 0.0 && y <= 1.0)) fail_parameter(error_id::input, where, concat("target[", t, "]"), "in [0, 1]", y);
    // With v = z1 - z0: -log p1 = softplus(-v), -log p0 = softplus(v).
    const double v = z1 - z0;
    total += y * loss_math::softplus(-v) + (1.0 - y) * loss_math::softplus(v);
    if (!grad.empty()) {
      const double g = (loss_math::sigmoid(v) - y) / static_cast<double>(T);  // dL/dz1 = p1 - y
      grad[static_cast<std::size_t>(2 * t)] = static_cast<S>(-g);
      grad[static_cast<std::size_t>(2 * t + 1)] = static_cast<S>(g);
    }
  }
  return T > 0 ? total / static_cast<double>(T) : 0.0;
}

}  // namespace detail

/// γ-MoD auxiliary loss `mean_t CE(softmax(z_t), target_t)` for logits `z [T × 2]` (row-major;
/// class 1 = "process") and targets `[T]` in [0, 1] (1 for the processed tokens; moe::executed_mask
/// writes them from a plan). Writes `dL/dz [T × 2]` to `grad` when it is not empty. T = 0 gives 0.
inline double gamma_mod_aux_loss(std::span<const float> logits, std::span<const float> target,
                                 std::span<float> grad = {}) {
  return detail::gamma_mod_aux_loss_impl<float>(logits, target, grad);
}
/// Double-precision overload.
inline double gamma_mod_aux_loss(std::span<const double> logits, std::span<const double> target,
                                 std::span<double> grad = {}) {
  return detail::gamma_mod_aux_loss_impl<double>(logits, target, grad);
}

}  // namespace moe
