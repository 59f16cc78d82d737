// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <limits>

#include "moe/config.hpp"
#include "moe/kernels/gating.hpp"

namespace moe {

/// What a router does with NaN logits (docs/routing-spec.md §1.2).
enum class nan_policy {
  error,      ///< throw moe::error naming the token and the expert (the default)
  to_neg_inf  ///< map NaN to -inf before anything else (the expert is then never selected)
};

/// Softmax gate: `p = softmax(z)` over all experts; +inf logits share the mass, an all -inf row
/// is degenerate and routes nowhere. Monotone: routers select on the logits.
struct softmax_gate {
  static constexpr const char* name() noexcept { return "softmax"; }
  /// Selecting on the logits selects the same experts, in the same order, as on the scores.
  static constexpr bool monotone = true;
  /// `p = gate(z)`; returns false for a degenerate (all -inf) row. If `entropy` is not null it
  /// receives entropy(p); `scratch` has room for n floats.
  static bool apply(const float* z, index n, float* p, float* entropy = nullptr, float* scratch = nullptr) noexcept {
    const bool ok = kernels::softmax(z, n, p);
    if (entropy) *entropy = softmax_gate::entropy(p, n, scratch);
    return ok;
  }
  /// Entropy (nats) of the routing distribution p, the one plans record (0 for all-zero p).
  static float entropy(const float* p, index n, float* /*scratch*/ = nullptr) noexcept {
    return kernels::entropy(p, n);
  }
};

/// Sigmoid gate (DeepSeek-V3 scores): `s = sigmoid(z)` elementwise, independent across experts.
/// Monotone: routers select on the logits (a -inf logit is never selected, a finite logit whose
/// sigmoid underflows to 0 is).
struct sigmoid_gate {
  static constexpr const char* name() noexcept { return "sigmoid"; }
  static constexpr bool monotone = true;
  /// `s = sigmoid(z)`; false if every logit is -inf. If `entropy` is not null it receives the
  /// entropy of the normalised scores `s / Σ s` (0 if every score is 0), using `scratch` (n floats).
  static bool apply(const float* z, index n, float* s, float* entropy = nullptr,
                    float* scratch = nullptr) noexcept {
    kernels::sigmoid(z, n, s);
    if (entropy) *entropy = sigmoid_gate::entropy(s, n, scratch);
    return kernels::max(z, n) > -std::numeric_limits<float>::infinity();
  }
  /// Entropy (nats) of the normalised scores `s / Σ s` (0 if every score is 0), using
  /// `scratch` (n floats): the one plans record.
  static float entropy(const float* s, index n, float* scratch) noexcept {
    const float total = kernels::sum(s, n);
    if (!(total > 0.0f)) return 0.0f;
    for (index i = 0; i < n; ++i) scratch[i] = s[i] / total;
    return kernels::entropy(scratch, n);
  }
};

}  // namespace moe
