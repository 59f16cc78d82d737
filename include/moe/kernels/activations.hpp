// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Expert activations, written once over V = float (the scalar reference) or xsimd::batch<float, A>
// with the canonical operations of kernels/math.hpp, so every kernel and the reference produce
// the same bits (docs/numerics.md §11). An activation policy (moe::act::*) gives
//   f(x)        the elementwise activation (a non-gated MLP: out = W_down f(W_up x)),
//   glu(g, u)   the gated combination of a gated MLP (default f(g) · u),
// and `name`. Activations take finite inputs; the clamps of clamped_swiglu are exact.

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/kernels/math.hpp"

namespace moe::kernels {

/// GELU, tanh approximation: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), evaluated as the
/// identical x·sigmoid(2·√(2/π)·(x + 0.044715·x³)).
template <class V>
MOE_FORCEINLINE V gelu_tanh(const V& x) noexcept {
  const V x3 = (x * x) * x;
  const V u = moe::kernels::fmadd(x3, V(0.044715f), x) * V(1.5957691216057308f);
  return x * moe::kernels::sigmoid(u);
}

/// erf(x), from erfc(|x|) = t·exp(-z² + P(t)), t = 1 / (1 + z/2) (the Chebyshev fit of Numerical
/// Recipes' erfcc, fractional error < 1.2e-7), erf = ±(1 - erfc): within 2.5e-7 of erf in fp32
/// (2.3e-7 measured over [-8, 8], tests/kernels/activations_test.cpp).
template <class V>
MOE_FORCEINLINE V erf(const V& x) noexcept {
  const V z = moe::kernels::detail::vabs(x);
  const V t = V(1.0f) / moe::kernels::fmadd(z, V(0.5f), V(1.0f));
  V p(0.17087277f);
  p = moe::kernels::fmadd(p, t, V(-0.82215223f));
  p = moe::kernels::fmadd(p, t, V(1.48851587f));
  p = moe::kernels::fmadd(p, t, V(-1.13520398f));
  p = moe::kernels::fmadd(p, t, V(0.27886807f));
  p = moe::kernels::fmadd(p, t, V(-0.18628806f));
  p = moe::kernels::fmadd(p, t, V(0.09678418f));
  p = moe::kernels::fmadd(p, t, V(0.37409196f));
  p = moe::kernels::fmadd(p, t, V(1.00002368f));
  p = moe::kernels::fmadd(p, t, V(-1.26551223f));
  const V ec = t * moe::kernels::exp(p - z * z);
  const V e = V(1.0f) - ec;
  return moe::kernels::detail::vselect(x < V(0.0f), V(0.0f) - e, e);
}

/// GELU, exact form: 0.5·x·(1 + erf(x / √2)).
template <class V>
MOE_FORCEINLINE V gelu_erf(const V& x) noexcept {
  const V e = moe::kernels::erf(x * V(0.70710678118654752f));
  return (x * V(0.5f)) * (V(1.0f) + e);
}

/// ReLU max(x, 0).
template <class V>
MOE_FORCEINLINE V relu(const V& x) noexcept {
  return moe::kernels::detail::vmax(x, V(0.0f));
}

/// Squared ReLU max(x, 0)² (Nemotron's non-gated experts).
template <class V>
MOE_FORCEINLINE V relu2(const V& x) noexcept {
  const V r = moe::kernels::detail::vmax(x, V(0.0f));
  return r * r;
}

}  // namespace moe::kernels

namespace moe::act {

/// SiLU (SwiGLU experts: Mixtral, Qwen, DeepSeek, OLMoE).
struct silu {
  static constexpr const char* name = "silu";
  template <class V>
  static V f(const V& x) noexcept { return moe::kernels::silu(x); }
  template <class V>
  static V glu(const V& g, const V& u) noexcept { return moe::kernels::silu(g) * u; }
};

/// GELU with the tanh approximation (GeGLU: Gemma; GELU MLPs: Switch, DiT-MoE).
struct gelu_tanh {
  static constexpr const char* name = "gelu_tanh";
  template <class V>
  static V f(const V& x) noexcept { return moe::kernels::gelu_tanh(x); }
  template <class V>
  static V glu(const V& g, const V& u) noexcept { return moe::kernels::gelu_tanh(g) * u; }
};

/// GELU, exact erf form.
struct gelu_erf {
  static constexpr const char* name = "gelu_erf";
  template <class V>
  static V f(const V& x) noexcept { return moe::kernels::gelu_erf(x); }
  template <class V>
  static V glu(const V& g, const V& u) noexcept { return moe::kernels::gelu_erf(g) * u; }
};

/// ReLU (non-gated MLP experts).
struct relu {
  static constexpr const char* name = "relu";
  template <class V>
  static V f(const V& x) noexcept { return moe::kernels::relu(x); }
  template <class V>
  static V glu(const V& g, const V& u) noexcept { return moe::kernels::relu(g) * u; }
};

/// Squared ReLU (Nemotron).
struct relu2 {
  static constexpr const char* name = "relu2";
  template <class V>
  static V f(const V& x) noexcept { return moe::kernels::relu2(x); }
  template <class V>
  static V glu(const V& g, const V& u) noexcept { return moe::kernels::relu2(g) * u; }
};

/// gpt-oss's clamped SwiGLU: g = min(g, 7), u = clamp(u, -7, 7), out = (u + 1)·g·σ(1.702·g).
/// (Gated only; the per-expert biases on gate, up and down are the bank's.)
struct clamped_swiglu {
  static constexpr const char* name = "clamped_swiglu";
  static constexpr float alpha = 1.702f;
  static constexpr float limit = 7.0f;
  template <class V>
  static V glu(const V& g, const V& u) noexcept {
    const V gc = moe::kernels::detail::vmin(g, V(limit));
    const V uc = moe::kernels::detail::vmax(moe::kernels::detail::vmin(u, V(limit)), V(-limit));
    const V glu_v = gc * moe::kernels::sigmoid(gc * V(alpha));
    return (uc + V(1.0f)) * glu_v;
  }
};

}  // namespace moe::act
