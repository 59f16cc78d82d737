// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Scalar reference gating kernels: the test oracle for the SIMD kernels and the fallback when no
// SIMD ISA is available. They define the canonical results:
//   - sums use 16 virtual lanes (element i goes to lane i mod 16, lanes are then added pairwise:
//     lane j += lane j+8, then j+4, j+2, j+1), the order every SIMD width reproduces;
//   - max, argmax and top-k are exact (no rounding), ties go to the lower index;
//   - exp / log / sigmoid are the canonical functions of kernels/math.hpp.
// Non-finite rules (routing-spec §1.2): a -inf score is never selected; +inf scores share a
// softmax's mass equally; NaN must be rejected or mapped to -inf before these kernels run.

#include <cmath>
#include <cstdint>
#include <limits>

#include "moe/config.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels::scalar {

/// Number of virtual lanes of every canonical reduction.
inline constexpr index reduce_lanes = 16;

/// Canonical sum of `x[0..n)`.
inline float sum(const float* x, index n) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) lane[i % reduce_lanes] += x[i];
  for (index w = reduce_lanes / 2; w >= 1; w /= 2) {
    for (index j = 0; j < w; ++j) lane[j] += lane[j + w];
  }
  return lane[0];
}

/// Largest element (-inf for n = 0).
inline float max(const float* x, index n) noexcept {
  float m = -std::numeric_limits<float>::infinity();
  for (index i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

/// Index of the largest element, lower index on ties (-1 for n = 0 or all -inf).
inline index argmax(const float* x, index n) noexcept {
  index best = -1;
  float m = -std::numeric_limits<float>::infinity();
  for (index i = 0; i < n; ++i) {
    if (x[i] > m) {
      m = x[i];
      best = i;
    }
  }
  return best;
}

/// True when any element is NaN.
inline bool has_nan(const float* x, index n) noexcept {
  for (index i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return true;
  }
  return false;
}

/// Replaces NaN by -inf in place.
inline void nan_to_neg_inf(float* x, index n) noexcept {
  for (index i = 0; i < n; ++i) {
    if (std::isnan(x[i])) x[i] = -std::numeric_limits<float>::infinity();
  }
}

/// Softmax of `z[0..n)` into `p` (may alias z). If max = +inf the +inf entries share the mass
/// equally; if every entry is -inf, p = 0. Returns false for that all -inf (degenerate) row.
inline bool softmax(const float* z, index n, float* p) noexcept {
  const float m = max(z, n);
  if (m == -std::numeric_limits<float>::infinity()) {
    for (index i = 0; i < n; ++i) p[i] = 0.0f;
    return false;
  }
  if (m == std::numeric_limits<float>::infinity()) {
    index count = 0;
    for (index i = 0; i < n; ++i) count += z[i] == m;
    const float share = 1.0f / static_cast<float>(count);
    for (index i = 0; i < n; ++i) p[i] = z[i] == m ? share : 0.0f;
    return true;
  }
  for (index i = 0; i < n; ++i) p[i] = kernels::exp(z[i] - m);
  const float total = sum(p, n);
  for (index i = 0; i < n; ++i) p[i] /= total;
  return true;
}

/// Elementwise logistic sigmoid of `z` into `s` (may alias).
inline void sigmoid(const float* z, index n, float* s) noexcept {
  for (index i = 0; i < n; ++i) s[i] = kernels::sigmoid(z[i]);
}

/// Entropy in nats of a probability vector, `-Σ p log p` with `0 log 0 = 0`, canonical order.
inline float entropy(const float* p, index n) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) {
    const float l = p[i] > 0.0f ? kernels::log(p[i]) : 0.0f;
    lane[i % reduce_lanes] = kernels::fmadd(-p[i], l, lane[i % reduce_lanes]);
  }
  for (index w = reduce_lanes / 2; w >= 1; w /= 2) {
    for (index j = 0; j < w; ++j) lane[j] += lane[j + w];
  }
  return lane[0];
}

/// Top-k selection: writes to `idx` the indices of the `k` largest keys, in descending key order,
/// ties by ascending index; keys equal to -inf are never selected. Returns the number selected
/// (`< k` when fewer than k keys are above -inf).
inline index top_k(const float* key, index n, index k, std::int32_t* idx) noexcept {
  index count = 0;
  for (index i = 0; i < n; ++i) {
    const float v = key[i];
    if (v == -std::numeric_limits<float>::infinity()) continue;
    if (count == k && !(v > key[idx[k - 1]])) continue;
    // Insert after every kept entry whose key is >= v (equal keys keep the lower index first).
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

}  // namespace moe::kernels::scalar
