// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// FTP losses (docs/routing-spec.md §13.4, [OURS] definition): the sparsity constraint, the guide loss
// towards the static router and the final-block distillation loss. Total
// `L = lambda_g L_g + L_s + L_distill`, lambda_g decayed linearly to 0 over training (the caller's
// schedule). Computed in double.

#include <algorithm>
#include <cmath>
#include <span>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/losses/detail/row_math.hpp"

namespace moe {
namespace detail {

template <class S>
double ftp_sparsity_loss_impl(std::span<const S> pi, std::span<const S> sparsity, std::span<S> grad) {
  constexpr const char* where = "moe::ftp_sparsity_loss";
  const auto layers = static_cast<index>(sparsity.size());
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), static_cast<index>(pi.size()));
  if (layers == 0) {
    check_extent(where, "pi.size()", static_cast<index>(pi.size()), 0);
    return 0.0;
  }
  const index T = static_cast<index>(pi.size()) / layers;
  check_extent(where, "pi.size()", static_cast<index>(pi.size()), layers * T);
  for (index i = 0; i < layers * T; ++i) loss_math::check_probability(where, "pi", i, pi[static_cast<std::size_t>(i)]);
  double total = 0;
  for (index l = 0; l < layers; ++l) {
    const S target = sparsity[static_cast<std::size_t>(l)];
    loss_math::check_probability(where, "sparsity", l, target);
    double skipped = 0;  // Σ_t (1 - pi)
    for (index t = 0; t < T; ++t) skipped += 1.0 - static_cast<double>(pi[static_cast<std::size_t>(l * T + t)]);
    const double achieved = T > 0 ? skipped / static_cast<double>(T) : 0.0;
    const double gap = static_cast<double>(target) - achieved;
    const bool active = T > 0 && gap > 0.0;
    if (active) total += gap;
    if (grad.empty()) continue;
    // d(s - ŝ)/dpi_t = 1/T where the hinge is active; 0 at and below the kink.
    for (index t = 0; t < T; ++t) {
      grad[static_cast<std::size_t>(l * T + t)] = active ? static_cast<S>(1.0 / static_cast<double>(T)) : S(0);
    }
  }
  return total;
}

template <class S>
double ftp_guide_loss_impl(std::span<const S> pi, std::span<const S> mask, std::span<S> grad) {
  constexpr const char* where = "moe::ftp_guide_loss";
  const auto T = static_cast<index>(pi.size());
  check_extent(where, "mask.size()", static_cast<index>(mask.size()), T);
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), T);
  double total = 0;
  for (index t = 0; t < T; ++t) {
    const auto i = static_cast<std::size_t>(t);
    loss_math::check_probability(where, "pi", t, pi[i]);
    loss_math::check_probability(where, "mask", t, mask[i]);
    const double p = pi[i], m = mask[i];
    // torch.nn.BCELoss: each log clamped to >= -100, so pi = 0 or 1 stays finite.
    const double log_p = std::max(std::log(p), -100.0), log_q = std::max(std::log1p(-p), -100.0);
    total += -(m * log_p + (1.0 - m) * log_q);
    if (!grad.empty()) grad[i] = static_cast<S>((p - m) / std::max(p * (1.0 - p), 1e-12) / static_cast<double>(T));
  }
  return T > 0 ? total / static_cast<double>(T) : 0.0;
}

template <class S>
double ftp_distillation_loss_impl(std::span<const S> pruned, std::span<const S> dense, std::span<S> grad) {
  constexpr const char* where = "moe::ftp_distillation_loss";
  const auto n = static_cast<index>(pruned.size());
  check_extent(where, "dense.size()", static_cast<index>(dense.size()), n);
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), n);
  double total = 0;
  for (index i = 0; i < n; ++i) {
    const double diff = static_cast<double>(pruned[static_cast<std::size_t>(i)]) - dense[static_cast<std::size_t>(i)];
    total += diff * diff;
    if (!grad.empty()) grad[static_cast<std::size_t>(i)] = static_cast<S>(2.0 * diff / static_cast<double>(n));
  }
  return n > 0 ? total / static_cast<double>(n) : 0.0;
}

}  // namespace detail

/// Sparsity-constraint loss `L_s = Σ_l max(s_l - ŝ_l, 0)`, `ŝ_l = (1/T) Σ_t (1 - pi_{l,t})`:
/// penalises only under-pruning. `pi [layers × T]` row-major keep probabilities, `sparsity
/// [layers]` targets s_l. Writes `dL_s/dpi` (1/T where the hinge is active, else 0, also at the
/// kink) to `grad` when it is not empty. T = 0 gives 0. Values outside [0, 1] throw moe::error.
inline double ftp_sparsity_loss(std::span<const float> pi, std::span<const float> sparsity, std::span<float> grad = {}) {
  return detail::ftp_sparsity_loss_impl<float>(pi, sparsity, grad);
}
/// Double-precision overload.
inline double ftp_sparsity_loss(std::span<const double> pi, std::span<const double> sparsity, std::span<double> grad = {}) {
  return detail::ftp_sparsity_loss_impl<double>(pi, sparsity, grad);
}

/// Guide loss `L_g = mean_t BCE(pi_t, m_t)` towards the static router's mask (moe::ftp_static_mask).
/// Each log is clamped to >= -100 as in torch's BCELoss. Writes `dL_g/dpi_t = (pi_t - m_t) /
/// (max(pi_t (1 - pi_t), 1e-12) T)` to `grad` when it is not empty. T = 0 gives 0.
inline double ftp_guide_loss(std::span<const float> pi, std::span<const float> mask, std::span<float> grad = {}) {
  return detail::ftp_guide_loss_impl<float>(pi, mask, grad);
}
/// Double-precision overload.
inline double ftp_guide_loss(std::span<const double> pi, std::span<const double> mask, std::span<double> grad = {}) {
  return detail::ftp_guide_loss_impl<double>(pi, mask, grad);
}

/// Distillation loss: mean squared error between the final-block hidden states of the pruned and
/// the dense model (any shape, flattened). Writes `dL/dpruned` to `grad` when it is not empty.
inline double ftp_distillation_loss(std::span<const float> pruned, std::span<const float> dense, std::span<float> grad = {}) {
  return detail::ftp_distillation_loss_impl<float>(pruned, dense, grad);
}
/// Double-precision overload.
inline double ftp_distillation_loss(std::span<const double> pruned, std::span<const double> dense,
                                    std::span<double> grad = {}) {
  return detail::ftp_distillation_loss_impl<double>(pruned, dense, grad);
}

}  // namespace moe
