// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Gating kernels used by the router policies: each call runs the best ISA of this CPU (see
// kernels/dispatch.hpp) and returns exactly the canonical result of the scalar reference
// (kernels/scalar/gating.hpp), whatever the ISA.

#include <cstdint>

#include "moe/config.hpp"
#include "moe/kernels/dispatch.hpp"

namespace moe::kernels {

/// Canonical sum (16 lanes, pairwise tree).
inline float sum(const float* x, index n) noexcept { return active_gating().sum(x, n); }
/// Canonical dot product.
inline float dot(const float* a, const float* b, index n) noexcept { return active_gating().dot(a, b, n); }
/// Largest element (-inf for n = 0).
inline float max(const float* x, index n) noexcept { return active_gating().max(x, n); }
/// Index of the largest element, lower index on ties; -1 if none is above -inf.
inline index argmax(const float* x, index n) noexcept { return active_gating().argmax(x, n); }
/// True when any element is NaN.
inline bool has_nan(const float* x, index n) noexcept { return active_gating().has_nan(x, n); }
/// Replaces NaN by -inf in place.
inline void nan_to_neg_inf(float* x, index n) noexcept { active_gating().nan_to_neg_inf(x, n); }
/// Softmax with the ±inf rules of docs/routing-spec.md §1.2; false for an all -inf row; optional entropy.
inline bool softmax(const float* z, index n, float* p, float* entropy = nullptr) noexcept {
  return active_gating().softmax(z, n, p, entropy);
}
/// Elementwise sigmoid.
inline void sigmoid(const float* z, index n, float* s) noexcept { active_gating().sigmoid(z, n, s); }
/// Elementwise sqrt(softplus(z)).
inline void sqrt_softplus(const float* z, index n, float* s) noexcept { active_gating().sqrt_softplus(z, n, s); }
/// ReLU + RMSNorm over the row (gamma may be null); returns the number of positive entries.
inline index relu_rmsnorm(const float* r, index n, const float* gamma, float eps, float* out) noexcept {
  return active_gating().relu_rmsnorm(r, n, gamma, eps, out);
}
/// Cosine similarity, norms clamped below by eps.
inline float cosine(const float* a, const float* b, index n, float eps = 1e-12f) noexcept {
  return active_gating().cosine(a, b, n, eps);
}
/// Renormalise by the canonical sum (0 if the sum is <= 0) when asked, then scale.
inline void renormalize_scale(float* w, index count, bool renormalize, float scale) noexcept {
  active_gating().renormalize_scale(w, count, renormalize, scale);
}
/// Shannon entropy in nats, 0 log 0 = 0.
inline float entropy(const float* p, index n) noexcept { return active_gating().entropy(p, n); }
/// Tsallis entropy (Shannon at q = 1) of p + eps.
inline float tsallis_entropy(const float* p, index n, float q, float eps) noexcept {
  return active_gating().tsallis_entropy(p, n, q, eps);
}
/// Top-k: indices of the k largest keys, descending, ties to the lower index, -inf never
/// selected; returns how many were selected. Keys must not be NaN.
inline index top_k(const float* key, index n, index k, std::int32_t* idx) noexcept {
  return active_gating().top_k(key, n, k, idx);
}
/// Name of the ISA the gating kernels run on.
inline const char* gating_isa() noexcept { return active_gating().name; }

}  // namespace moe::kernels
