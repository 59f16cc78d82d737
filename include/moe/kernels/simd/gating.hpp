// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// SIMD gating kernels over fp32 rows, one template per ISA (`Arch` is an xsimd architecture).
// Each reproduces the operation order of its scalar reference in kernels/scalar/gating.hpp, so
// results are bitwise identical on every ISA:
//   - reductions keep 16 virtual lanes in 16 / batch::size registers (element i -> lane i mod 16)
//     and finish with the reference's pairwise tree;
//   - partial vectors are padded with the identity of the operation (0 for sums, -inf for max);
//   - exp / log / sigmoid / softplus are the canonical templates of kernels/math.hpp.
// Kernels know nothing of policies; they take raw pointers and extents and never throw.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "moe/config.hpp"
#include "moe/kernels/math.hpp"
#include "moe/kernels/scalar/gating.hpp"

namespace moe::kernels::simd {

template <class A>
using batch = xsimd::batch<float, A>;

/// Floats per register of A.
template <class A>
inline constexpr index width = static_cast<index>(batch<A>::size);

/// Registers holding the 16 canonical reduction lanes.
template <class A>
inline constexpr index accumulators = scalar::reduce_lanes / width<A>;

namespace detail {
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// Loads x[0..count) (count < width) padded with `pad`.
template <class A>
MOE_FORCEINLINE batch<A> load_partial(const float* x, index count, float pad) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(pad), static_cast<__mmask16>((1u << count) - 1u), x);
  }
#endif
  alignas(64) float tmp[64];
  for (index i = 0; i < width<A>; ++i) tmp[i] = i < count ? x[i] : pad;
  return batch<A>::load_aligned(tmp);
}

// Loads the register starting at x + i of a row of n floats, padded past n.
template <class A>
MOE_FORCEINLINE batch<A> load_at(const float* x, index i, index n, float pad) noexcept {
  if (i + width<A> <= n) return batch<A>::load_unaligned(x + i);
  if (i >= n) return batch<A>(pad);
  return load_partial<A>(x + i, n - i, pad);
}

template <class A>
MOE_FORCEINLINE void store_at(float* x, index i, index n, const batch<A>& v) noexcept {
  if (i + width<A> <= n) {
    v.store_unaligned(x + i);
    return;
  }
#if XSIMD_WITH_AVX512F
  if constexpr (std::is_base_of_v<xsimd::avx512f, A>) {
    _mm512_mask_storeu_ps(x + i, static_cast<__mmask16>((1u << (n - i)) - 1u), v);
    return;
  }
#endif
  alignas(64) float tmp[64];
  v.store_aligned(tmp);
  for (index j = 0; i + j < n; ++j) x[i + j] = tmp[j];
}

template <class A>
inline constexpr bool is_avx512 =
#if XSIMD_WITH_AVX512F
    std::is_base_of_v<xsimd::avx512f, A>;
#else
    false;
#endif
template <class A>
inline constexpr bool is_avx =
#if XSIMD_WITH_AVX
    std::is_base_of_v<xsimd::avx, A> && !is_avx512<A>;
#else
    false;
#endif
template <class A>
inline constexpr bool is_sse =
#if XSIMD_WITH_SSE2
    std::is_base_of_v<xsimd::sse2, A> && !is_avx<A> && !is_avx512<A>;
#else
    false;
#endif

#if XSIMD_WITH_SSE2
// Lanes (j, j+4) of an 8-lane sum given as two halves, then (j, j+2), then (j, j+1): the last
// three steps of the canonical tree.
MOE_FORCEINLINE float tree_tail(__m128 lo, __m128 hi) noexcept {
  const __m128 s4 = _mm_add_ps(lo, hi);
  const __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  const __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
  return _mm_cvtss_f32(s1);
}
#endif

// The canonical tree over 16 lanes held in accumulators<A> registers: lane j += lane j+8, then
// j+4, j+2, j+1 (the same additions, in the same order, as scalar::sum).
template <class A>
MOE_FORCEINLINE float tree_sum(const batch<A> (&acc)[accumulators<A>]) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_avx512<A>) {
    const __m512 v = acc[0];
    const __m256 lo = _mm512_castps512_ps256(v);
    const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 s8 = _mm256_add_ps(lo, hi);
    return tree_tail(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  } else
#endif
#if XSIMD_WITH_AVX
  if constexpr (is_avx<A>) {
    const __m256 s8 = _mm256_add_ps(acc[0], acc[1]);
    return tree_tail(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
  } else
#endif
#if XSIMD_WITH_SSE2
  if constexpr (is_sse<A>) {
    return tree_tail(_mm_add_ps(acc[0], acc[2]), _mm_add_ps(acc[1], acc[3]));
  } else
#endif
  {
    alignas(64) float lane[scalar::reduce_lanes];
    for (index j = 0; j < accumulators<A>; ++j) acc[j].store_aligned(lane + j * width<A>);
    for (index w = scalar::reduce_lanes / 2; w >= 1; w /= 2) {
      for (index j = 0; j < w; ++j) lane[j] += lane[j + w];
    }
    return lane[0];
  }
}

// Largest lane (exact, so any order).
template <class A>
MOE_FORCEINLINE float horizontal_max(const batch<A>& v) noexcept {
#if XSIMD_WITH_AVX512F
  if constexpr (is_avx512<A>) return _mm512_reduce_max_ps(v);
#endif
#if XSIMD_WITH_AVX
  if constexpr (is_avx<A>) {
    const __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (is_sse<A>) {
    const __m128 m2 = _mm_max_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1)));
  }
#endif
  alignas(64) float lane[64];
  v.store_aligned(lane);
  float m = lane[0];
  for (index j = 1; j < width<A>; ++j) m = lane[j] > m ? lane[j] : m;
  return m;
}

// Bit i set when lane i of v compares with x as Cmp says (std::equal_to or std::greater_equal).
template <class A, class Cmp>
MOE_FORCEINLINE unsigned compare_mask(const batch<A>& v, float x) noexcept {
  constexpr bool eq = std::is_same_v<Cmp, std::equal_to<float>>;
  static_assert(eq || std::is_same_v<Cmp, std::greater_equal<float>>, "compare_mask: == or >= only");
#if XSIMD_WITH_AVX512F
  if constexpr (is_avx512<A>) return _mm512_cmp_ps_mask(v, _mm512_set1_ps(x), eq ? _CMP_EQ_OQ : _CMP_GE_OQ);
#endif
#if XSIMD_WITH_AVX
  if constexpr (is_avx<A>) {
    return static_cast<unsigned>(_mm256_movemask_ps(_mm256_cmp_ps(v, _mm256_set1_ps(x), eq ? _CMP_EQ_OQ : _CMP_GE_OQ)));
  }
#endif
#if XSIMD_WITH_SSE2
  if constexpr (is_sse<A>) {
    const __m128 bx = _mm_set1_ps(x);
    return static_cast<unsigned>(_mm_movemask_ps(eq ? _mm_cmpeq_ps(v, bx) : _mm_cmpge_ps(v, bx)));
  }
#endif
  alignas(64) float lane[64];
  v.store_aligned(lane);
  unsigned m = 0;
  for (index j = 0; j < width<A>; ++j) m |= static_cast<unsigned>(Cmp{}(lane[j], x)) << j;
  return m;
}
template <class A>
MOE_FORCEINLINE unsigned ge_mask(const batch<A>& v, float x) noexcept {
  return compare_mask<A, std::greater_equal<float>>(v, x);
}
template <class A>
MOE_FORCEINLINE unsigned equal_mask(const batch<A>& v, float x) noexcept {
  return compare_mask<A, std::equal_to<float>>(v, x);
}

// Rank of each of the first c of 16 values (aligned) in the (value desc, index asc) order:
// rank_i = #{j < c : v_j > v_i} + #{j < i : v_j == v_i}, from compare masks, without branches.
template <class A>
MOE_FORCEINLINE void ranks_16(const float* v, index c, int* rank) noexcept {
  batch<A> regs[accumulators<A>];
  for (index a = 0; a < accumulators<A>; ++a) regs[a] = batch<A>::load_aligned(v + a * width<A>);
  const unsigned valid = c >= scalar::reduce_lanes ? 0xffffu : (1u << c) - 1u;
  for (index i = 0; i < c; ++i) {
    unsigned ge = 0, eq = 0;
    for (index a = 0; a < accumulators<A>; ++a) {
      ge |= ge_mask<A>(regs[a], v[i]) << (a * width<A>);
      eq |= equal_mask<A>(regs[a], v[i]) << (a * width<A>);
    }
    rank[i] = std::popcount(ge & ~eq & valid) + std::popcount(eq & valid & ((1u << i) - 1u));
  }
}

// The k-th largest of 16 values (aligned; k in [1, 16]): the one of rank k - 1.
template <class A>
MOE_FORCEINLINE float kth_of_16(const float* v, index k) noexcept {
  int rank[scalar::reduce_lanes];
  ranks_16<A>(v, scalar::reduce_lanes, rank);
  float out = neg_inf;
  for (index i = 0; i < scalar::reduce_lanes; ++i) out = rank[i] == k - 1 ? v[i] : out;
  return out;
}

// The first min(c, k) of c <= 16 candidates (in index order) by rank: idx[rank] = where[i].
template <class A>
MOE_FORCEINLINE index select_by_rank(const float* cand, const std::int32_t* where, index c, index k,
                                     std::int32_t* idx) noexcept {
  alignas(64) float v[scalar::reduce_lanes];
  for (index i = 0; i < scalar::reduce_lanes; ++i) v[i] = i < c ? cand[i] : neg_inf;
  int rank[scalar::reduce_lanes];
  ranks_16<A>(v, c, rank);
  for (index i = 0; i < c; ++i) {
    if (rank[i] < k) idx[rank[i]] = where[i];
  }
  return std::min(c, k);
}

// Gathers, in index order, the keys >= bound of a padded row and their positions.
template <class A>
MOE_FORCEINLINE index gather_at_least(const float* buf, index padded, float bound, float* cand,
                                      std::int32_t* where) noexcept {
  index c = 0;
#if XSIMD_WITH_AVX512F
  if constexpr (is_avx512<A>) {
    const __m512 b = _mm512_set1_ps(bound);
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (index i = 0; i < padded; i += 16) {
      const __m512 v = _mm512_load_ps(buf + i);
      const __mmask16 m = _mm512_cmp_ps_mask(v, b, _CMP_GE_OQ);
      _mm512_mask_compressstoreu_ps(cand + c, m, v);
      _mm512_mask_compressstoreu_epi32(where + c, m, _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int>(i))));
      c += std::popcount(static_cast<unsigned>(m));
    }
    return c;
  }
#endif
  for (index i = 0; i < padded; i += width<A>) {
    unsigned m = ge_mask<A>(batch<A>::load_aligned(buf + i), bound);
    while (m != 0) {
      const index at = i + std::countr_zero(m);
      cand[c] = buf[at];
      where[c++] = static_cast<std::int32_t>(at);
      m &= m - 1;
    }
  }
  return c;
}

// Applies f(batch, i) to every register of a row, 16 elements (one lane group) at a time, so
// that f can feed accumulator j = (i / width) mod accumulators.
template <class A, class F>
MOE_FORCEINLINE void for_each_register(index n, F&& f) noexcept {
  for (index i = 0; i < n; i += scalar::reduce_lanes) {
    for (index j = 0; j < accumulators<A>; ++j) {
      const index at = i + j * width<A>;
      if (at < n) f(at, j);
    }
  }
}
}  // namespace detail

/// Canonical sum.
template <class A>
float sum(const float* x, index n) noexcept {
  batch<A> acc[accumulators<A>];
  for (auto& a : acc) a = batch<A>(0.0f);
  detail::for_each_register<A>(n, [&](index i, index j) { acc[j] += detail::load_at<A>(x, i, n, 0.0f); });
  return detail::tree_sum<A>(acc);
}

/// Canonical dot product (fused multiply-add per lane).
template <class A>
float dot(const float* a, const float* b, index n) noexcept {
  batch<A> acc[accumulators<A>];
  for (auto& v : acc) v = batch<A>(0.0f);
  detail::for_each_register<A>(n, [&](index i, index j) {
    acc[j] = kernels::fmadd(detail::load_at<A>(a, i, n, 0.0f), detail::load_at<A>(b, i, n, 0.0f), acc[j]);
  });
  return detail::tree_sum<A>(acc);
}

/// Largest element (-inf for n = 0).
template <class A>
float max(const float* x, index n) noexcept {
  batch<A> m(detail::neg_inf);
  for (index i = 0; i < n; i += width<A>) m = xsimd::max(m, detail::load_at<A>(x, i, n, detail::neg_inf));
  return detail::horizontal_max<A>(m);
}

/// Index of the first element equal to v (n if none).
template <class A>
index find_first(const float* x, index n, float v) noexcept {
  for (index i = 0; i < n; i += width<A>) {
    const unsigned m = detail::equal_mask<A>(detail::load_at<A>(x, i, n, detail::neg_inf), v);
    if (m != 0) {
      const index at = i + std::countr_zero(m);
      return at < n ? at : n;
    }
  }
  return n;
}

/// Index of the largest element, lower index on ties (-1 for n = 0 or all -inf).
template <class A>
index argmax(const float* x, index n) noexcept {
  const float m = max<A>(x, n);
  if (m == detail::neg_inf) return -1;
  return find_first<A>(x, n, m);
}

/// True when any element is NaN.
template <class A>
bool has_nan(const float* x, index n) noexcept {
  for (index i = 0; i < n; i += width<A>) {
    const batch<A> v = detail::load_at<A>(x, i, n, 0.0f);
    if (xsimd::any(xsimd::isnan(v))) return true;
  }
  return false;
}

/// Replaces NaN by -inf in place.
template <class A>
void nan_to_neg_inf(float* x, index n) noexcept {
  for (index i = 0; i < n; i += width<A>) {
    const batch<A> v = detail::load_at<A>(x, i, n, 0.0f);
    detail::store_at<A>(x, i, n, xsimd::select(xsimd::isnan(v), batch<A>(detail::neg_inf), v));
  }
}

/// Softmax with the ±inf rules and the optional entropy of scalar::softmax.
template <class A>
bool softmax(const float* z, index n, float* p, float* entropy = nullptr) noexcept {
  const float m = max<A>(z, n);
  if (m == detail::neg_inf || m == std::numeric_limits<float>::infinity()) {
    return scalar::softmax(z, n, p, entropy);  // exact cases: no arithmetic to vectorise
  }
  batch<A> acc[accumulators<A>], tacc[accumulators<A>];
  for (index j = 0; j < accumulators<A>; ++j) acc[j] = tacc[j] = batch<A>(0.0f);
  const batch<A> bm(m);
  auto pass = [&](auto with_entropy) {
    detail::for_each_register<A>(n, [&](index i, index j) {
      const batch<A> d = detail::load_at<A>(z, i, n, detail::neg_inf) - bm;
      const batch<A> e = kernels::exp(d);
      acc[j] += e;
      if constexpr (decltype(with_entropy)::value) {
        tacc[j] = kernels::fmadd(e, xsimd::select(e > batch<A>(0.0f), d, batch<A>(0.0f)), tacc[j]);
      }
      detail::store_at<A>(p, i, n, e);
    });
  };
  if (entropy) {
    pass(std::true_type{});
  } else {
    pass(std::false_type{});
  }
  const float total = detail::tree_sum<A>(acc);
  const batch<A> inv(1.0f / total);
  for (index i = 0; i < n; i += width<A>) detail::store_at<A>(p, i, n, detail::load_at<A>(p, i, n, 0.0f) * inv);
  if (entropy) *entropy = kernels::log(total) - detail::tree_sum<A>(tacc) / total;
  return true;
}

/// Elementwise logistic sigmoid.
template <class A>
void sigmoid(const float* z, index n, float* s) noexcept {
  for (index i = 0; i < n; i += width<A>) {
    detail::store_at<A>(s, i, n, kernels::sigmoid(detail::load_at<A>(z, i, n, 0.0f)));
  }
}

/// Elementwise sqrt(softplus(z)).
template <class A>
void sqrt_softplus(const float* z, index n, float* s) noexcept {
  for (index i = 0; i < n; i += width<A>) {
    detail::store_at<A>(s, i, n, xsimd::sqrt(kernels::softplus(detail::load_at<A>(z, i, n, 0.0f))));
  }
}

/// ReLU + RMSNorm over the expert axis (see scalar::relu_rmsnorm); returns the active count.
template <class A>
index relu_rmsnorm(const float* r, index n, const float* gamma, float eps, float* out) noexcept {
  index active = 0;
  for (index i = 0; i < n; i += width<A>) {
    const batch<A> v = detail::load_at<A>(r, i, n, 0.0f);
    const auto pos = v > batch<A>(0.0f);
    detail::store_at<A>(out, i, n, xsimd::select(pos, v, batch<A>(0.0f)));
  }
  for (index i = 0; i < n; ++i) active += r[i] > 0.0f;
  const float ms = dot<A>(out, out, n) / static_cast<float>(n);
  const batch<A> inv(1.0f / std::sqrt(ms + eps));
  for (index i = 0; i < n; i += width<A>) {
    batch<A> v = detail::load_at<A>(out, i, n, 0.0f) * inv;
    if (gamma) v = v * detail::load_at<A>(gamma, i, n, 0.0f);
    detail::store_at<A>(out, i, n, v);
  }
  return active;
}

/// Cosine similarity (see scalar::cosine).
template <class A>
float cosine(const float* a, const float* b, index n, float eps = 1e-12f) noexcept {
  const float na = std::sqrt(dot<A>(a, a, n));
  const float nb = std::sqrt(dot<A>(b, b, n));
  return dot<A>(a, b, n) / ((na > eps ? na : eps) * (nb > eps ? nb : eps));
}

/// Renormalise (canonical sum, zero-denominator rule) and scale, in place.
template <class A>
void renormalize_scale(float* w, index count, bool renormalize, float scale) noexcept {
  if (count <= scalar::reduce_lanes) {
    // A few weights (k of them): the reference's own loop is the fastest way to its bits.
    scalar::renormalize_scale(w, count, renormalize, scale);
    return;
  }
  if (renormalize) {
    const float total = sum<A>(w, count);
    const batch<A> bt(total > 0.0f ? total : 1.0f);
    for (index i = 0; i < count; i += width<A>) {
      const batch<A> v = detail::load_at<A>(w, i, count, 0.0f);
      detail::store_at<A>(w, i, count, total > 0.0f ? v / bt : batch<A>(0.0f));
    }
  }
  const batch<A> bs(scale);
  for (index i = 0; i < count; i += width<A>) {
    detail::store_at<A>(w, i, count, detail::load_at<A>(w, i, count, 0.0f) * bs);
  }
}

/// Shannon entropy `-Σ p log p` (0 log 0 = 0).
template <class A>
float entropy(const float* p, index n) noexcept {
  batch<A> acc[accumulators<A>];
  for (auto& a : acc) a = batch<A>(0.0f);
  detail::for_each_register<A>(n, [&](index i, index j) {
    const batch<A> v = detail::load_at<A>(p, i, n, 0.0f);
    const batch<A> l = xsimd::select(v >= batch<A>(std::numeric_limits<float>::min()), kernels::log(v), batch<A>(0.0f));
    acc[j] = kernels::fmadd(batch<A>(0.0f) - v, l, acc[j]);
  });
  return detail::tree_sum<A>(acc);
}

/// Tsallis entropy (Shannon at q = 1), see scalar::tsallis_entropy.
template <class A>
float tsallis_entropy(const float* p, index n, float q, float eps) noexcept {
  batch<A> acc[accumulators<A>];
  for (auto& a : acc) a = batch<A>(0.0f);
  const batch<A> bq(q), be(eps), zero(0.0f);
  detail::for_each_register<A>(n, [&](index i, index j) {
    const index valid = std::min(width<A>, n - i);
    const batch<A> v = detail::load_at<A>(p, i, n, 0.0f) + be;
    const auto normal = v >= batch<A>(std::numeric_limits<float>::min());
    const batch<A> l = xsimd::select(normal, kernels::log(v), zero);
    // Padding lanes must contribute exactly 0: mask them out.
    batch<A> vm = v;
    if (valid < width<A>) {
      alignas(64) float t[64];
      v.store_aligned(t);
      for (index k = valid; k < width<A>; ++k) t[k] = 0.0f;
      vm = batch<A>::load_aligned(t);
    }
    if (q == 1.0f) {
      acc[j] = kernels::fmadd(zero - vm, l, acc[j]);  // -= v log v, one fused step as in scalar
    } else {
      acc[j] += xsimd::select(vm > zero, xsimd::select(normal, kernels::exp(bq * l), zero), zero);
    }
  });
  const float total = detail::tree_sum<A>(acc);
  return q == 1.0f ? total : (1.0f - total) / (q - 1.0f);
}

/// Top-k selection (see scalar::top_k).
///
/// Dispatch: 0. rows that fit one register (E = 8 on AVX2, up to 16 on AVX-512) without NaN:
/// the rounds of 2. kept in the register instead of a buffer (top-2 of 8 in 7 ns, 10 through
/// path 2, 57 through path 1); 1. k <= 16: the k-th largest of the 16 canonical lanes' maxima is
/// a lower bound for the k-th largest key (k distinct keys reach it), so only keys at or above
/// it can be selected; those candidates, gathered in index order, go through the scalar selection, which
/// keeps ties in index order; 2. larger k: rounds, each taking the largest key strictly below
/// the previous round's value and emitting its ties in index order; 3. rows longer than 1024:
/// the scalar reference.
template <class A>
index top_k(const float* key, index n, index k, std::int32_t* idx) noexcept {
  constexpr index max_n = 1024;
  if (n > max_n || k <= 0) return k <= 0 ? 0 : scalar::top_k(key, n, k, idx);
  if (n <= width<A>) {
    batch<A> v = detail::load_at<A>(key, 0, n, detail::neg_inf);
    if (!xsimd::any(v != v)) {
      index count = 0;
      while (count < k) {
        const float best = detail::horizontal_max<A>(v);
        if (best == detail::neg_inf) break;  // -inf is never selected
        unsigned m = detail::equal_mask<A>(v, best);
        while (m != 0 && count < k) {
          idx[count++] = static_cast<std::int32_t>(std::countr_zero(m));
          m &= m - 1;
        }
        v = xsimd::select(v == batch<A>(best), batch<A>(detail::neg_inf), v);
      }
      return count;
    }
  }
  alignas(64) float buf[max_n + 64];
  const index padded = (n + width<A> - 1) / width<A> * width<A>;
  batch<A> lane_max[accumulators<A>];
  for (auto& m : lane_max) m = batch<A>(detail::neg_inf);
  index j = 0;
  for (index i = 0; i < padded; i += width<A>) {
    const batch<A> v = detail::load_at<A>(key, i, n, detail::neg_inf);
    v.store_aligned(buf + i);
    lane_max[j] = xsimd::max(lane_max[j], v);
    j = j + 1 == accumulators<A> ? 0 : j + 1;
  }
  if (k <= scalar::reduce_lanes) {
    alignas(64) float lanes[scalar::reduce_lanes];
    for (index a = 0; a < accumulators<A>; ++a) lane_max[a].store_aligned(lanes + a * width<A>);
    // Keys below the bound cannot be selected; -inf never is (the bound excludes it too).
    float bound = detail::kth_of_16<A>(lanes, k);
    if (bound == detail::neg_inf) bound = -std::numeric_limits<float>::max();
    alignas(64) float cand[max_n + 64];
    alignas(64) std::int32_t where[max_n + 64];
    const index c = detail::gather_at_least<A>(buf, padded, bound, cand, where);
    if (c > scalar::reduce_lanes) {  // many ties at the bound: exact but branchy
      const index count = scalar::top_k(cand, c, k, idx);
      for (index s = 0; s < count; ++s) idx[s] = where[idx[s]];
      return count;
    }
    return detail::select_by_rank<A>(cand, where, c, k, idx);
  }
  batch<A> row_max = lane_max[0];
  for (index a = 1; a < accumulators<A>; ++a) row_max = xsimd::max(row_max, lane_max[a]);
  index count = 0;
  float best = detail::horizontal_max<A>(row_max);
  while (count < k && best != detail::neg_inf) {
    for (index i = 0; i < padded && count < k; i += width<A>) {
      unsigned m = detail::equal_mask<A>(batch<A>::load_aligned(buf + i), best);
      while (m != 0 && count < k) {
        idx[count++] = static_cast<std::int32_t>(i + std::countr_zero(m));
        m &= m - 1;
      }
    }
    if (count == k) break;
    const batch<A> below(best);
    row_max = batch<A>(detail::neg_inf);
    for (index i = 0; i < padded; i += width<A>) {
      const batch<A> v = batch<A>::load_aligned(buf + i);
      row_max = xsimd::max(row_max, xsimd::select(v < below, v, batch<A>(detail::neg_inf)));
    }
    best = detail::horizontal_max<A>(row_max);
  }
  return count;
}

}  // namespace moe::kernels::simd
