// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Dr.LLM router training loss (docs/routing-spec.md §13.1): focal loss with effective-number class
// weights, averaged over (example, layer) pairs. Computed in double.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

/// Class weights from the effective number of samples (Cui et al.): `w_c = (1 - beta) /
/// (1 - beta^{n_c})`, normalised so that they sum to the number of classes C:
/// `alpha_c = C w_c / Σ w`. Dr.LLM: beta = 0.999, counts skip 4399, execute 120956, repeat 1457.
/// Throws moe::error naming 'beta' (outside [0, 1)) or 'class_counts[c]' (not finite and > 0).
inline std::vector<double> effective_number_weights(std::span<const double> class_counts, double beta) {
  constexpr const char* where = "moe::effective_number_weights";
  if (!(beta >= 0.0 && beta < 1.0)) detail::fail_parameter(error_id::config, where, "beta", "in [0, 1)", beta);
  if (class_counts.empty()) detail::fail_parameter(error_id::config, where, "class_counts.size()", ">= 1", 0);
  std::vector<double> w(class_counts.size());
  double total = 0;
  for (std::size_t c = 0; c < class_counts.size(); ++c) {
    const double n = class_counts[c];
    if (!(n > 0.0) || !std::isfinite(n)) {
      detail::fail_parameter(error_id::config, where, detail::concat("class_counts[", c, "]"), "finite and > 0", n);
    }
    // 1 - beta^n, accurately for beta near 1.
    const double denom = beta > 0.0 ? -std::expm1(n * std::log(beta)) : 1.0;
    w[c] = (1.0 - beta) / denom;
    total += w[c];
  }
  for (double& v : w) v *= static_cast<double>(w.size()) / total;
  return w;
}

/// Options of moe::focal_loss.
struct focal_options {
  /// Number of classes C (Dr.LLM: 3, skip / execute / repeat).
  index classes = 3;
  /// Per-class weights alpha [C] (moe::effective_number_weights); empty: 1 for every class.
  std::vector<double> alpha = {};
  /// Focusing parameter gamma >= 0 (Dr.LLM: 2); 0 gives weighted cross-entropy.
  double gamma = 2.0;
};

namespace detail {

template <class S>
double focal_loss_impl(std::span<const S> logits, std::span<const std::int32_t> labels, const focal_options& o,
                       std::span<S> grad) {
  constexpr const char* where = "moe::focal_loss";
  const index C = o.classes;
  if (C < 1) fail_parameter(error_id::config, where, "classes", ">= 1", C);
  if (!o.alpha.empty()) check_extent(where, "alpha.size()", static_cast<index>(o.alpha.size()), C);
  for (std::size_t c = 0; c < o.alpha.size(); ++c) {
    if (!(o.alpha[c] >= 0.0) || !std::isfinite(o.alpha[c])) {
      fail_parameter(error_id::config, where, concat("alpha[", c, "]"), "finite and >= 0", o.alpha[c]);
    }
  }
  if (!(o.gamma >= 0.0) || !std::isfinite(o.gamma)) fail_parameter(error_id::config, where, "gamma", "finite and >= 0", o.gamma);
  const auto N = static_cast<index>(labels.size());
  check_extent(where, "logits.size()", static_cast<index>(logits.size()), N * C);
  if (!grad.empty()) check_extent(where, "grad.size()", static_cast<index>(grad.size()), N * C);
  double total = 0;
  for (index n = 0; n < N; ++n) {
    const S* z = logits.data() + n * C;
    const std::int32_t y = labels[static_cast<std::size_t>(n)];
    if (y < 0 || y >= C) fail_parameter(error_id::input, where, concat("labels[", n, "]"), concat("in [0, ", C, ")"), y);
    double m = -std::numeric_limits<double>::infinity();
    for (index c = 0; c < C; ++c) {
      if (!std::isfinite(static_cast<double>(z[c]))) {
        fail_parameter(error_id::input, where, concat("logits[", n * C + c, "]"), "finite", z[c]);
      }
      m = std::max(m, static_cast<double>(z[c]));
    }
    double s = 0;
    for (index c = 0; c < C; ++c) s += std::exp(static_cast<double>(z[c]) - m);
    const double lse = m + std::log(s);
    const double log_py = static_cast<double>(z[y]) - lse;
    const double py = std::exp(log_py);
    const double q = -std::expm1(log_py);  // 1 - p_y
    const double a = o.alpha.empty() ? 1.0 : o.alpha[static_cast<std::size_t>(y)];
    const double focus = o.gamma == 0.0 ? 1.0 : std::pow(q, o.gamma);
    total += -a * focus * log_py;
    if (grad.empty()) continue;
    // dl/dz_j = -a [ (1-p)^g - g (1-p)^(g-1) p log p ] (delta_jy - p_j); the second term -> 0 as p -> 1.
    const double second = (o.gamma > 0.0 && q > 0.0) ? o.gamma * std::pow(q, o.gamma - 1.0) * py * log_py : 0.0;
    const double coef = -a * (focus - second) / static_cast<double>(N);
    for (index c = 0; c < C; ++c) {
      const double pc = std::exp(static_cast<double>(z[c]) - lse);
      grad[static_cast<std::size_t>(n * C + c)] = static_cast<S>(coef * ((c == y ? 1.0 : 0.0) - pc));
    }
  }
  return N > 0 ? total / static_cast<double>(N) : 0.0;
}

}  // namespace detail

/// Focal loss `mean_n [ -alpha_{y_n} (1 - p_{n,y_n})^gamma log p_{n,y_n} ]`, `p_n = softmax(z_n)`,
/// for logits `z [N × C]` (row-major; Dr.LLM: one row per (example, layer)) and labels `y [N]`.
/// Writes `dL/dz [N × C]` to `grad` when it is not empty. N = 0 gives 0. Throws moe::error naming
/// the parameter for bad options, sizes, labels outside [0, C) or non-finite logits.
inline double focal_loss(std::span<const float> logits, std::span<const std::int32_t> labels,
                         const focal_options& options = {}, std::span<float> grad = {}) {
  return detail::focal_loss_impl<float>(logits, labels, options, grad);
}
/// Double-precision overload.
inline double focal_loss(std::span<const double> logits, std::span<const std::int32_t> labels,
                         const focal_options& options = {}, std::span<double> grad = {}) {
  return detail::focal_loss_impl<double>(logits, labels, options, grad);
}

}  // namespace moe
