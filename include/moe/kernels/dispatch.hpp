// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Runtime ISA dispatch of the gating kernels.
//
// Dispatch:
//   1. `gating_table` holds one pointer per kernel; `make_gating_table<Arch>()` fills it with the
//      kernels/simd instantiations for Arch, `scalar_gating_table()` with the scalar reference;
//   2. `gating_archs` lists the ISAs compiled into this translation unit, best first
//      (AVX-512F, AVX2+FMA, SSE2): an ISA is compiled in when the build enables it (-march);
//   3. `active_gating()` walks that list once with xsimd::dispatch, which compares each ISA
//      with what the CPU reports, and keeps the best table the CPU can run.
// Every table computes the same bits (see kernels/simd/gating.hpp), so the choice changes speed,
// never results.

#include <cstdint>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/kernels/scalar/gating.hpp"
#include "moe/kernels/simd/gating.hpp"

namespace moe::kernels {

/// One ISA's gating kernels.
struct gating_table {
  const char* name;
  float (*sum)(const float*, index) noexcept;
  float (*dot)(const float*, const float*, index) noexcept;
  float (*max)(const float*, index) noexcept;
  index (*argmax)(const float*, index) noexcept;
  bool (*has_nan)(const float*, index) noexcept;
  void (*nan_to_neg_inf)(float*, index) noexcept;
  bool (*softmax)(const float*, index, float*, float*) noexcept;
  void (*sigmoid)(const float*, index, float*) noexcept;
  void (*sqrt_softplus)(const float*, index, float*) noexcept;
  index (*relu_rmsnorm)(const float*, index, const float*, float, float*) noexcept;
  float (*cosine)(const float*, const float*, index, float) noexcept;
  void (*renormalize_scale)(float*, index, bool, float) noexcept;
  float (*entropy)(const float*, index) noexcept;
  float (*tsallis_entropy)(const float*, index, float, float) noexcept;
  index (*top_k)(const float*, index, index, std::int32_t*) noexcept;
};

/// The table of Arch's SIMD kernels.
template <class Arch>
constexpr gating_table make_gating_table() noexcept {
  return {Arch::name(),          &simd::sum<Arch>,          &simd::dot<Arch>,
          &simd::max<Arch>,      &simd::argmax<Arch>,       &simd::has_nan<Arch>,
          &simd::nan_to_neg_inf<Arch>, &simd::softmax<Arch>, &simd::sigmoid<Arch>,
          &simd::sqrt_softplus<Arch>, &simd::relu_rmsnorm<Arch>, &simd::cosine<Arch>,
          &simd::renormalize_scale<Arch>, &simd::entropy<Arch>, &simd::tsallis_entropy<Arch>,
          &simd::top_k<Arch>};
}

/// The table of the scalar reference kernels (the test oracle).
inline constexpr gating_table scalar_gating_table() noexcept {
  return {"scalar",          &scalar::sum,           &scalar::dot,
          &scalar::max,      &scalar::argmax,        &scalar::has_nan,
          &scalar::nan_to_neg_inf, &scalar::softmax, &scalar::sigmoid,
          &scalar::sqrt_softplus, &scalar::relu_rmsnorm, &scalar::cosine,
          &scalar::renormalize_scale, &scalar::entropy, &scalar::tsallis_entropy,
          &scalar::top_k};
}

namespace detail {
template <class List, class... Archs>
struct keep_compiled;
template <class... Kept>
struct keep_compiled<xsimd::arch_list<Kept...>> {
  using type = xsimd::arch_list<Kept...>;
};
template <class... Kept, class A, class... Rest>
struct keep_compiled<xsimd::arch_list<Kept...>, A, Rest...>
    : keep_compiled<std::conditional_t<A::supported(), xsimd::arch_list<Kept..., A>, xsimd::arch_list<Kept...>>,
                    Rest...> {};
}  // namespace detail

/// ISAs the gating kernels are compiled for in this translation unit, best first.
using gating_archs = typename detail::keep_compiled<xsimd::arch_list<>, xsimd::avx512f,
                                                    xsimd::fma3<xsimd::avx2>, xsimd::sse2>::type;

namespace detail {
struct table_picker {
  template <class Arch>
  gating_table operator()(Arch) const noexcept {
    return make_gating_table<Arch>();
  }
};
}  // namespace detail

/// Tables of every compiled-in ISA the running CPU supports, best first (for tests/benchmarks).
inline std::vector<gating_table> runnable_gating_tables() {
  std::vector<gating_table> out;
  const unsigned best = xsimd::available_architectures().best;
  gating_archs::for_each([&](auto arch) {
    if (decltype(arch)::version() <= best) out.push_back(make_gating_table<decltype(arch)>());
  });
  return out;
}

/// The gating kernels of the best ISA this CPU runs (chosen once, on first use).
inline const gating_table& active_gating() noexcept {
  static const gating_table table = [] {
    if constexpr (std::is_same_v<gating_archs, xsimd::arch_list<>>) {
      return scalar_gating_table();
    } else {
      if (xsimd::available_architectures().best < xsimd::sse2::version()) return scalar_gating_table();
      return xsimd::dispatch<gating_archs>(detail::table_picker{})();
    }
  }();
  return table;
}

}  // namespace moe::kernels
