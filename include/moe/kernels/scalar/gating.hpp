// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Scalar reference gating kernels: the test oracle for the SIMD kernels and the fallback when no
// SIMD ISA is available. They define the canonical results:
//   - sums use 16 virtual lanes (element i goes to lane i mod 16, lanes are then added pairwise:
//     lane j += lane j+8, then j+4, j+2, j+1), the order every SIMD width reproduces;
//   - max, argmax and top-k are exact (no rounding), ties go to the lower index;
//   - exp / log / sigmoid are the canonical functions of kernels/math.hpp.
// Non-finite rules (docs/routing-spec.md §1.2): a -inf score is never selected; +inf scores share a
// softmax's mass equally; NaN must be rejected or mapped to -inf before these kernels run.

#include <cmath>
#include <cstdint>
#include <limits>

#include "moe/config.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels::scalar {

/// Number of virtual lanes of every canonical reduction.
inline constexpr index reduce_lanes = 16;

/// The canonical pairwise tree over 16 lanes: lane j += lane j+8, then j+4, j+2, j+1.
inline float tree(float (&lane)[reduce_lanes]) noexcept {
  for (index w = reduce_lanes / 2; w >= 1; w /= 2) {
    for (index j = 0; j < w; ++j) lane[j] += lane[j + w];
  }
  return lane[0];
}

/// Canonical sum of `x[0..n)`.
inline float sum(const float* x, index n) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) lane[i % reduce_lanes] += x[i];
  return tree(lane);
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

/// Canonical dot product `Σ a[i] b[i]`: lane i mod 16 accumulates by fused multiply-add.
inline float dot(const float* a, const float* b, index n) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) lane[i % reduce_lanes] = kernels::fmadd(a[i], b[i], lane[i % reduce_lanes]);
  return tree(lane);
}

/// Softmax of `z[0..n)` into `p` (may alias z): `p_i = e_i · (1 / S)`, `e_i = exp(z_i - M)`,
/// `S = sum(e)` (one division per row). If M = +inf the +inf entries share the mass equally; if every entry is -inf,
/// p = 0. Returns false for that all -inf (degenerate) row.
/// If `entropy` is not null it receives the entropy of p in nats, from the logits:
/// `H = log S - sum(t) / S` with `t_i = e_i (z_i - M)` (0 where e_i = 0); log(n) for the +inf case,
/// 0 for a degenerate row.
inline bool softmax(const float* z, index n, float* p, float* entropy = nullptr) noexcept {
  const float m = max(z, n);
  if (m == -std::numeric_limits<float>::infinity()) {
    for (index i = 0; i < n; ++i) p[i] = 0.0f;
    if (entropy) *entropy = 0.0f;
    return false;
  }
  if (m == std::numeric_limits<float>::infinity()) {
    index count = 0;
    for (index i = 0; i < n; ++i) count += z[i] == m;
    const float share = 1.0f / static_cast<float>(count);
    for (index i = 0; i < n; ++i) p[i] = z[i] == m ? share : 0.0f;
    if (entropy) *entropy = kernels::log(static_cast<float>(count));
    return true;
  }
  float lane[reduce_lanes] = {}, tlane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) {
    const float d = z[i] - m;
    const float e = kernels::exp(d);
    lane[i % reduce_lanes] += e;
    // e (z - M), 0 where e = 0 (z - M may be -inf there): an explicit fused step, like every
    // product that feeds a sum in the canonical kernels.
    tlane[i % reduce_lanes] = kernels::fmadd(e, e > 0.0f ? d : 0.0f, tlane[i % reduce_lanes]);
    p[i] = e;
  }
  const float total = tree(lane);
  const float t = tree(tlane);
  const float inv = 1.0f / total;
  for (index i = 0; i < n; ++i) p[i] *= inv;
  if (entropy) *entropy = kernels::log(total) - t / total;
  return true;
}

/// Elementwise logistic sigmoid of `z` into `s` (may alias).
inline void sigmoid(const float* z, index n, float* s) noexcept {
  for (index i = 0; i < n; ++i) s[i] = kernels::sigmoid(z[i]);
}

/// `sqrt(softplus(z))` elementwise (a DeepSeek-style scoring function).
inline void sqrt_softplus(const float* z, index n, float* s) noexcept {
  for (index i = 0; i < n; ++i) s[i] = std::sqrt(kernels::softplus(z[i]));
}

/// BlockFFN router activation: `a = relu(r)`, `out = a / sqrt(mean(a^2) + eps) * gamma` (gamma
/// null: 1). `mean(a^2) = dot(a, a) / n`. A row with no positive score gives 0. Returns the
/// number of active (positive) entries.
inline index relu_rmsnorm(const float* r, index n, const float* gamma, float eps, float* out) noexcept {
  index active = 0;
  for (index i = 0; i < n; ++i) {
    out[i] = r[i] > 0.0f ? r[i] : 0.0f;
    active += r[i] > 0.0f;
  }
  const float ms = dot(out, out, n) / static_cast<float>(n);
  const float inv = 1.0f / std::sqrt(ms + eps);
  for (index i = 0; i < n; ++i) out[i] = gamma ? (out[i] * inv) * gamma[i] : out[i] * inv;
  return active;
}

/// Cosine similarity `dot(a, b) / (max(|a|, eps) max(|b|, eps))`, `|a| = sqrt(dot(a, a))`
/// (0 when either vector is 0).
inline float cosine(const float* a, const float* b, index n, float eps = 1e-12f) noexcept {
  const float na = std::sqrt(dot(a, a, n));
  const float nb = std::sqrt(dot(b, b, n));
  return dot(a, b, n) / ((na > eps ? na : eps) * (nb > eps ? nb : eps));
}

/// Renormalises `w[0..count)` by its canonical sum (weights 0 if the sum is <= 0) when asked,
/// then multiplies by `scale`.
inline void renormalize_scale(float* w, index count, bool renormalize, float scale) noexcept {
  if (renormalize) {
    const float total = sum(w, count);
    for (index i = 0; i < count; ++i) w[i] = total > 0.0f ? w[i] / total : 0.0f;
  }
  for (index i = 0; i < count; ++i) w[i] *= scale;
}

/// Tsallis entropy `(1 - Σ (p + eps)^q) / (q - 1)`; for q = 1 the Shannon limit
/// `-Σ (p + eps) log(p + eps)`. `(p + eps)^q = exp(q log(p + eps))`.
inline float tsallis_entropy(const float* p, index n, float q, float eps) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) {
    const float v = p[i] + eps;
    const bool normal = v >= std::numeric_limits<float>::min();
    const float l = normal ? kernels::log(v) : 0.0f;
    // Shannon: lane -= v log v as one fused step; Tsallis: lane += v^q.
    lane[i % reduce_lanes] = q == 1.0f ? kernels::fmadd(-v, l, lane[i % reduce_lanes])
                                       : lane[i % reduce_lanes] + (normal ? kernels::exp(q * l) : 0.0f);
  }
  const float total = tree(lane);
  return q == 1.0f ? total : (1.0f - total) / (q - 1.0f);
}

/// Entropy in nats of a probability vector, `-Σ p log p` with `0 log 0 = 0` (subnormal p count
/// as 0), canonical order.
inline float entropy(const float* p, index n) noexcept {
  float lane[reduce_lanes] = {};
  for (index i = 0; i < n; ++i) {
    // 0 log 0 = 0, and so for subnormal p (|p log p| < 1e-36; log treats subnormals as 0).
    const float l = p[i] >= std::numeric_limits<float>::min() ? kernels::log(p[i]) : 0.0f;
    lane[i % reduce_lanes] = kernels::fmadd(-p[i], l, lane[i % reduce_lanes]);
  }
  return tree(lane);
}

/// Top-k selection: writes to `idx` the indices of the `k` largest keys, in descending key order,
/// ties by ascending index; keys equal to -inf are never selected. Returns the number selected
/// (`< k` when fewer than k keys are above -inf).
inline index top_k(const float* key, index n, index k, std::int32_t* idx) noexcept {
  if (k <= 0) return 0;
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
