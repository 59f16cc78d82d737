// SPDX-License-Identifier: Apache-2.0
#pragma once

// Machine probes, measured in the benchmark's own process so that every ratio compares numbers
// taken in the same run:
//   fma_peak()        independent fp32 FMA chains on all threads (GFLOP/s)
//   bf16_dot_peak()   independent vdpbf16ps chains on all threads (GFLOP/s; 0 without avx512_bf16)
//   amx_peak()        independent AMX tdpbf16ps tiles on all threads (GFLOP/s; 0 without AMX)
//   read_bandwidth()  a float sum over 1 GiB with 8 independent SIMD accumulators per thread (GB/s);
//                     read_bandwidth_now() measures it again (the host's bandwidth drifts)
//   dense_seconds(T)  an Eigen dense FFN of the same FLOPs as a T-token OLMoE forward:
//                     [T·k × d]·[d × f] twice and [T·k × f]·[f × d], all threads (median of 3)
// Each value is measured once (best of a few repetitions) and cached.

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <vector>

#include <omp.h>

#include <xsimd/xsimd.hpp>

#include <moe/core/workspace.hpp>
#include <moe/kernels/gemm.hpp>
#include <moe/kernels/math.hpp>

#include "olmoe_fixture.hpp"

namespace moe_bench {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline double fma_peak() {
  static const double value = [] {
    using batch = xsimd::batch<float>;
    // Enough independent chains to cover the FMA latency on every pipe, few enough to stay in
    // registers with a and b: 16 of AVX-512's 32 registers, 12 of AVX2's 16 (16 chains spilled
    // there and measured half the rate that moe's own GEMM then reached).
    constexpr int chains = moe::kernels::vector_registers<xsimd::default_arch> >= 32 ? 16 : 12;
    const long steps = 20'000'000;
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      int threads = 1;
      float sink = 0;
#pragma omp parallel reduction(+ : sink)
      {
#pragma omp single
        threads = omp_get_num_threads();
        batch c[chains];
        for (int i = 0; i < chains; ++i) c[i] = batch(0.001f * static_cast<float>(i));
        const batch a(0.99999f), b(1e-6f);
        for (long s = 0; s < steps; ++s) {
#pragma GCC unroll 16
          for (int i = 0; i < chains; ++i) c[i] = moe::kernels::fmadd(c[i], a, b);
        }
        for (int i = 0; i < chains; ++i) sink += xsimd::hadd(c[i]);
      }
      const double dt = seconds_since(t0);
      if (sink == 12345.0f) std::abort();
      best = std::max(best, 2.0 * chains * batch::size * static_cast<double>(steps) * threads / dt / 1e9);
    }
    return best;
  }();
  return value;
}

#if defined(MOE_HAS_BF16_DOT_KERNEL)
/// 16 independent vdpbf16ps chains for `steps` steps.
__attribute__((target("avx512f,avx512bf16"), noinline)) inline float detail_bf16_chains(long steps) {
  __m512 c[16];
  for (int i = 0; i < 16; ++i) c[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f), b = (__m512bh)_mm512_set1_epi32(0x33d633d6);
  for (long s = 0; s < steps; ++s) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) c[i] = _mm512_dpbf16_ps(c[i], a, b);
  }
  for (int i = 1; i < 16; ++i) c[0] = _mm512_add_ps(c[0], c[i]);
  return _mm512_reduce_add_ps(c[0]);
}
#endif

inline double bf16_dot_peak() {
  static const double value = [] {
    double best = 0;
#if defined(MOE_HAS_BF16_DOT_KERNEL)
    if (!moe::kernels::bf16_dot_available<xsimd::avx512f>()) return 0.0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      int threads = 1;
      const long steps = 20'000'000;
      float sink = 0;
#pragma omp parallel reduction(+ : sink)
      {
#pragma omp single
        threads = omp_get_num_threads();
        sink += detail_bf16_chains(steps);
      }
      const double dt = seconds_since(t0);
      if (sink == 12345.0f) std::abort();
      best = std::max(best, 2.0 * 2 * 16 * 16 * static_cast<double>(steps) * threads / dt / 1e9);
    }
#endif
    return best;
  }();
  return value;
}

#if defined(MOE_HAS_AMX_KERNEL)
/// 4 independent tdpbf16ps accumulators (16×16×32 each) over L1-resident tiles, `steps` times.
__attribute__((target("amx-tile,amx-bf16"), noinline)) inline float detail_amx_chains(long steps) {
  alignas(64) static moe::bf16 a[2 * 16 * 32], b[2 * 16 * 32];
  alignas(64) float c[16 * 16];
  for (int i = 0; i < 2 * 16 * 32; ++i) a[i] = b[i] = moe::bf16(0.001f);
  moe::kernels::detail::amx_configure(32);  // every tile 16 rows
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, a, 64);
  _tile_loadd(5, a + 16 * 32, 64);
  _tile_loadd(6, b, 64);
  _tile_loadd(7, b + 16 * 32, 64);
  for (long s = 0; s < steps; ++s) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  moe::kernels::detail::amx_end();
  return c[0];
}
#endif

/// AMX bf16 tile throughput on all threads (GFLOP/s; 0 where AMX is not usable).
inline double amx_peak() {
  static const double value = [] {
    double best = 0;
#if defined(MOE_HAS_AMX_KERNEL)
    if (!moe::kernels::amx_available()) return 0.0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      int threads = 1;
      const long steps = 5'000'000;
      float sink = 0;
#pragma omp parallel reduction(+ : sink)
      {
#pragma omp single
        threads = omp_get_num_threads();
        sink += detail_amx_chains(steps);
      }
      const double dt = seconds_since(t0);
      if (sink == 12345.0f) std::abort();
      best = std::max(best, 4.0 * 16 * 16 * 32 * 2 * static_cast<double>(steps) * threads / dt / 1e9);
    }
#endif
    return best;
  }();
  return value;
}

/// Peak of the unit that runs bf16 experts here: AMX, vdpbf16ps or fp32 FMA (widening).
inline double bf16_peak() {
  using A = moe::kernels::gemm_arch;
  switch (moe::kernels::resolve_bf16_kernel<A>(moe::kernels::bf16_kernel::automatic)) {
    case moe::kernels::bf16_kernel::amx: return amx_peak();
    case moe::kernels::bf16_kernel::dot: return bf16_dot_peak();
    default: return fma_peak();
  }
}

/// One measurement of the read bandwidth now: a float sum over 1 GiB (allocated once) with 8
/// independent SIMD accumulators per thread, best of `passes` (GB/s).
inline double read_bandwidth_now(int passes = 2) {
  using batch = xsimd::batch<float>;
  static const std::size_t n = std::size_t{1} << 28;  // 1 GiB of floats, far beyond the L3
  static moe::aligned_buffer<float> a = [] {
    moe::aligned_buffer<float> buf(n);
#pragma omp parallel for schedule(static)
    for (std::size_t i = 0; i < n; ++i) buf[i] = 1.0f;
    return buf;
  }();
  double best = 0;
  for (int rep = 0; rep < passes; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    {
      const int t = omp_get_thread_num(), nt = omp_get_num_threads();
      const std::size_t step = 8 * batch::size;
      const std::size_t b = n / step * t / nt * step, e = n / step * (t + 1) / nt * step;
      batch s[8];
      for (auto& v : s) v = batch(0.0f);
      for (std::size_t i = b; i < e; i += step) {
#pragma GCC unroll 8
        for (std::size_t j = 0; j < 8; ++j) s[j] += batch::load_aligned(a.data() + i + j * batch::size);
      }
      for (int j = 1; j < 8; ++j) s[0] += s[j];
      total += xsimd::hadd(s[0]);
    }
    const double dt = seconds_since(t0);
    if (total == 1.0f) std::abort();
    best = std::max(best, static_cast<double>(n) * sizeof(float) / dt / 1e9);
  }
  return best;
}

/// The read bandwidth at first use (best of 4 passes), for benchmarks that report it once.
inline double read_bandwidth() {
  static const double value = read_bandwidth_now(4);
  return value;
}

inline double dense_seconds(moe::index T) {
  static std::map<moe::index, double> cache;
  if (auto it = cache.find(T); it != cache.end()) return it->second;
  const moe::index M = T * k;
  const auto x = Eigen::Map<const Eigen::MatrixXf>(random(static_cast<std::size_t>(M * d), 1.0f, 21).data(), M, d).eval();
  const auto wg = Eigen::Map<const Eigen::MatrixXf>(random(static_cast<std::size_t>(d * f), 0.02f, 22).data(), d, f).eval();
  const auto wu = Eigen::Map<const Eigen::MatrixXf>(random(static_cast<std::size_t>(d * f), 0.02f, 23).data(), d, f).eval();
  const auto wd = Eigen::Map<const Eigen::MatrixXf>(random(static_cast<std::size_t>(f * d), 0.02f, 24).data(), f, d).eval();
  Eigen::MatrixXf g(M, f), u(M, f), y(M, d);
  std::vector<double> times;
  for (int rep = 0; rep < 4; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    g.noalias() = x * wg;
    u.noalias() = x * wu;
    y.noalias() = g * wd;
    if (rep > 0) times.push_back(seconds_since(t0));  // the first run warms up
  }
  std::sort(times.begin(), times.end());
  return cache[T] = times[times.size() / 2];
}

}  // namespace moe_bench
