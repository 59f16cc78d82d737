// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Double-precision row helpers shared by every loss function of losses/ (balance losses, the
// policy losses and the layer-skip losses): the same rules as the routers' float kernels (±inf,
// ties to the lower index), computed in double. The one set of such helpers: do not add others.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe::detail::loss_math {

inline constexpr double inf = std::numeric_limits<double>::infinity();

/// Loss inputs are float or double matrices.
template <class Scalar>
inline constexpr bool is_loss_scalar = std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>;

/// Throws moe::error (input) naming `param` if `v` is NaN.
inline void check_not_nan(double v, const char* where, const char* param, index row, index col) {
  if (std::isnan(v)) {
    throw_error(error_id::input, concat(where, ": parameter '", param, "' holds NaN at (", row, ", ", col,
                                        "); expected finite or ±inf values"));
  }
}

/// Throws moe::error (input) naming `param` if `v` is not finite.
inline void check_finite(double v, const char* where, const char* param, index row, index col) {
  if (!std::isfinite(v)) {
    throw_error(error_id::input, concat(where, ": parameter '", param, "' must be finite, got ", v, " at (", row,
                                        ", ", col, ")"));
  }
}

/// Softmax of `z[0..n)` into `p` with the routers' rules: +inf entries share the mass, -inf get
/// 0, an all -inf row gives p = 0. Returns 0 for a degenerate row, 2 for a saturated one (max
/// +inf: p is a constant step, its derivative 0), 1 otherwise.
inline int softmax(const double* z, index n, double* p) noexcept {
  double m = -inf;
  for (index i = 0; i < n; ++i) m = z[i] > m ? z[i] : m;
  if (m == -inf) {
    for (index i = 0; i < n; ++i) p[i] = 0.0;
    return 0;
  }
  if (m == inf) {
    double count = 0;
    for (index i = 0; i < n; ++i) count += z[i] == inf;
    for (index i = 0; i < n; ++i) p[i] = z[i] == inf ? 1.0 / count : 0.0;
    return 2;
  }
  double total = 0;
  for (index i = 0; i < n; ++i) total += p[i] = std::exp(z[i] - m);
  for (index i = 0; i < n; ++i) p[i] /= total;
  return 1;
}

/// The k largest keys, descending, ties to the lower index, -inf never selected; returns the
/// count (the rule of moe::kernels::top_k, in double).
inline index top_k(const double* key, index n, index k, std::int32_t* idx) noexcept {
  index count = 0;
  for (index i = 0; i < n; ++i) {
    const double v = key[i];
    if (v == -inf) continue;
    if (count == k && !(v > key[idx[k - 1]])) continue;
    index pos = count < k ? count : k - 1;
    while (pos > 0 && key[idx[pos - 1]] < v) {
      idx[pos] = idx[pos - 1];
      --pos;
    }
    idx[pos] = static_cast<std::int32_t>(i);
    if (count < k) ++count;
  }
  return count;
}

/// Logistic sigmoid `1 / (1 + e^-x)`, stable for large |x|; sigmoid(±inf) = 1 and 0.
inline double sigmoid(double x) noexcept {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

/// softplus(x) = log(1 + exp(x)), stable for any finite x.
inline double softplus(double x) noexcept { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

/// Throws moe::error (input) naming `name[i]` unless 0 <= v <= 1 (probabilities, targets).
template <class S>
void check_probability(const char* where, const char* name, index i, S v) {
  if (!(v >= S(0) && v <= S(1))) fail_parameter(error_id::input, where, concat(name, "[", i, "]"), "in [0, 1]", v);
}

}  // namespace moe::detail::loss_math
