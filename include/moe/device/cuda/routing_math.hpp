// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The per-token routing math of the token-choice policies, written once for the host and for
// CUDA (docs/architecture.md §5.4). Plain C++20: it compiles with any host compiler, and with nvcc
// every function is `__host__ __device__` (MOE_HOST_DEVICE). The CUDA routing kernel
// (routing.cuh) runs these functions on the GPU; host_emulation (host_emulation.hpp) runs the same
// functions over the same grid/block index math on the CPU, so that the kernels' logic is tested
// in every build against the CPU routers, bit for bit.
//
// What is computed, for one row of C score columns (docs/routing-spec.md §1-§4, §7):
//   1. temperature:   z /= temperature (when != 1)
//   2. NaN policy:    report the first NaN column (nan_policy::error), or map NaN to -inf
//   3. gate:          p = softmax(z) or sigmoid(z); the entropy the plan records
//   4. keys:          z (selection on logits) or gate(z) + bias (-inf logits stay -inf);
//                     group-limited: group scores (top2_sum / max), the topk_groups best groups
//                     kept (ties: lower group; -inf groups after the finite ones), the others -inf
//   5. select:        the k best keys (ties: lower column; -inf never selected)
//   6. weigh:         p of the selected columns (0 for null columns), renormalised (a sum <= 0
//                     gives 0), times route_scale; null columns become moe::no_expert
//
// How a row is split between threads: `row_lanes` (16) lanes cooperate on a row, lane l owning
// the columns c ≡ l (mod 16) in ascending order. That is exactly the canonical reduction order
// of the scalar kernels (kernels/scalar/gating.hpp: element i goes to virtual lane i mod 16,
// lanes are then added pairwise), so the lane partial sums and the tree reproduce the scalar
// bits. The row program is a sequence of steps `ex.lanes(f)`: on the GPU each thread runs f for
// its own lane and the half-warp synchronises (__syncwarp); on the host, f runs for lanes
// 0..15 in turn. Lanes communicate only through the row's scratch between steps.
//
// Bitwise agreement with the host kernels needs the same IEEE operations in the same order:
// products and sums go through mul()/add()/div() (__fmul_rn etc. on the device, which nvcc never
// contracts into an FMA), fused steps through fmadd(); exp/log/sigmoid are copies of the
// canonical functions of kernels/math.hpp (xsimd is not usable in device code), and
// tests/device/cuda_logic_test.cpp checks that they give the same bits.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

/// `__host__ __device__` under nvcc, nothing for a host compiler.
#if defined(__CUDACC__)
#define MOE_HOST_DEVICE __host__ __device__
#else
#define MOE_HOST_DEVICE
#endif

namespace moe::kernels::cuda {

// ---------------------------------------------------------------------------------------------
// Scalar math shared by host and device.

/// Lanes cooperating on one row; also the number of virtual lanes of every canonical reduction.
inline constexpr int row_lanes = 16;

/// The float with bit pattern `u`.
MOE_HOST_DEVICE inline float from_bits(std::uint32_t u) noexcept {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
/// The bit pattern of `f`.
MOE_HOST_DEVICE inline std::uint32_t to_bits(float f) noexcept {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

MOE_HOST_DEVICE inline float pos_inf() noexcept { return from_bits(0x7f800000u); }
MOE_HOST_DEVICE inline float neg_inf() noexcept { return from_bits(0xff800000u); }
/// FLT_MIN, the smallest normal float.
MOE_HOST_DEVICE inline float min_normal() noexcept { return from_bits(0x00800000u); }
MOE_HOST_DEVICE inline bool is_nan(float x) noexcept { return (to_bits(x) & 0x7fffffffu) > 0x7f800000u; }

/// `a * b`, rounded once, never contracted with a following add.
MOE_HOST_DEVICE inline float mul(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
/// `a + b`, never contracted with a preceding product.
MOE_HOST_DEVICE inline float add(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
/// `a - b`.
MOE_HOST_DEVICE inline float sub(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
/// `a / b`, correctly rounded (also under nvcc's -prec-div=false).
MOE_HOST_DEVICE inline float div(float a, float b) noexcept {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
/// Fused multiply-add `a * b + c`, one rounding.
MOE_HOST_DEVICE inline float fmadd(float a, float b, float c) noexcept {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
MOE_HOST_DEVICE inline float floor_(float x) noexcept {
#if defined(__CUDA_ARCH__)
  return floorf(x);
#else
  return std::floor(x);
#endif
}
MOE_HOST_DEVICE inline float abs_(float x) noexcept { return from_bits(to_bits(x) & 0x7fffffffu); }
MOE_HOST_DEVICE inline float min_(float a, float b) noexcept { return a < b ? a : b; }
MOE_HOST_DEVICE inline float max_(float a, float b) noexcept { return a > b ? a : b; }

/// 2^n for integral-valued n in [-126, 127], from the exponent bits.
MOE_HOST_DEVICE inline float pow2i(float n) noexcept {
  return from_bits(static_cast<std::uint32_t>((static_cast<std::int32_t>(n) + 127) << 23));
}

/// e^x: the canonical exp of kernels/math.hpp, operation for operation.
MOE_HOST_DEVICE inline float exp(float x) noexcept {
  const float hi = 88.72283935546875f;
  const float lo = -87.3365f;
  const float xc = max_(min_(x, hi), lo);
  const float n = floor_(fmadd(xc, 1.44269504088896341f, 0.5f));
  float r = fmadd(n, -0.693359375f, xc);
  r = fmadd(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmadd(p, r, 1.3981999507e-3f);
  p = fmadd(p, r, 8.3334519073e-3f);
  p = fmadd(p, r, 4.1665795894e-2f);
  p = fmadd(p, r, 1.6666665459e-1f);
  p = fmadd(p, r, 5.0000001201e-1f);
  const float r2 = mul(r, r);
  p = fmadd(p, r2, r);
  p = add(p, 1.0f);
  const float n1 = floor_(mul(n, 0.5f));
  const float n2 = sub(n, n1);
  float y = mul(mul(p, pow2i(n1)), pow2i(n2));
  y = x > hi ? pos_inf() : y;
  y = x < lo ? 0.0f : y;
  return y;
}

/// Natural logarithm for x >= 0: the canonical log of kernels/math.hpp.
MOE_HOST_DEVICE inline float log(float x) noexcept {
  const auto bits = static_cast<std::int32_t>(to_bits(x));
  float e = static_cast<float>((bits >> 23) - 127);
  float m = from_bits(static_cast<std::uint32_t>((bits & 0x007fffff) | 0x3f800000));
  const bool big = m > 1.41421356237f;
  m = big ? mul(m, 0.5f) : m;
  e = big ? add(e, 1.0f) : e;
  const float f = sub(m, 1.0f);
  float p = 7.0376836292e-2f;
  p = fmadd(p, f, -1.1514610310e-1f);
  p = fmadd(p, f, 1.1676998740e-1f);
  p = fmadd(p, f, -1.2420140846e-1f);
  p = fmadd(p, f, 1.4249322787e-1f);
  p = fmadd(p, f, -1.6668057665e-1f);
  p = fmadd(p, f, 2.0000714765e-1f);
  p = fmadd(p, f, -2.4999993993e-1f);
  p = fmadd(p, f, 3.3333331174e-1f);
  const float f2 = mul(f, f);
  float y = mul(mul(p, f), f2);
  y = fmadd(e, -2.12194440e-4f, y);
  y = fmadd(f2, -0.5f, y);
  float r = add(f, y);
  r = fmadd(e, 0.693359375f, r);
  r = x < min_normal() ? neg_inf() : r;
  r = x == pos_inf() ? pos_inf() : r;
  return r;
}

/// Logistic sigmoid: the canonical sigmoid of kernels/math.hpp.
MOE_HOST_DEVICE inline float sigmoid(float x) noexcept {
  const float e = cuda::exp(sub(0.0f, abs_(x)));
  const float s = div(1.0f, add(1.0f, e));
  return x >= 0.0f ? s : mul(e, s);
}

/// SiLU x · sigmoid(x) (the SwiGLU activation), canonical.
MOE_HOST_DEVICE inline float silu(float x) noexcept { return mul(x, cuda::sigmoid(x)); }

/// The canonical pairwise tree over 16 lane partials (lane j += lane j+8, j+4, j+2, j+1), on a
/// copy: the array is left as it is.
MOE_HOST_DEVICE inline float tree(const float* partial) noexcept {
  float lane[row_lanes];
  for (int j = 0; j < row_lanes; ++j) lane[j] = partial[j];
  for (int w = row_lanes / 2; w >= 1; w /= 2) {
    for (int j = 0; j < w; ++j) lane[j] = add(lane[j], lane[j + w]);
  }
  return lane[0];
}

/// Canonical sum of `x[0..n)` on one thread (for short rows such as the k weights).
MOE_HOST_DEVICE inline float canonical_sum(const float* x, int n) noexcept {
  float lane[row_lanes] = {};
  for (int i = 0; i < n; ++i) lane[i % row_lanes] = add(lane[i % row_lanes], x[i]);
  return tree(lane);
}

/// Top-k on one thread: the indices of the k largest keys, descending, ties to the lower index,
/// -inf never selected; returns how many (kernels/scalar/gating.hpp top_k).
MOE_HOST_DEVICE inline int serial_top_k(const float* key, int n, int k, std::int32_t* idx) noexcept {
  if (k <= 0) return 0;
  int count = 0;
  for (int i = 0; i < n; ++i) {
    const float v = key[i];
    if (v == neg_inf()) continue;
    if (count == k && !(v > key[idx[k - 1]])) continue;
    int pos = count < k ? count : k - 1;
    while (pos > 0 && key[idx[pos - 1]] < v) {
      idx[pos] = idx[pos - 1];
      --pos;
    }
    idx[pos] = static_cast<std::int32_t>(i);
    if (count < k) ++count;
  }
  return count;
}

// ---------------------------------------------------------------------------------------------
// One row of a token-choice policy.

/// Largest k of the fused routing kernel (slots per token).
inline constexpr int max_k = 32;
/// Largest number of score columns (experts plus null columns) of the fused routing kernel.
inline constexpr int max_columns = 1024 + 1024;

/// Gate of a row policy.
enum class gate_kind : std::int32_t { softmax = 0, sigmoid = 1 };
/// Group score of group-limited routing (moe::group_score).
enum class group_kind : std::int32_t { top2_sum = 0, max = 1 };

/// A token-choice policy reduced to plain data: what the routing kernel needs of moe::top_k,
/// moe::group_limited and moe::null_experts (host_emulation.hpp builds it from those routers).
struct row_policy {
  gate_kind gate = gate_kind::softmax;
  std::int32_t columns = 0;       ///< C: score columns, true experts first, then null columns
  std::int32_t null_columns = 0;  ///< m: trailing columns that compute nothing (AdaMoE)
  std::int32_t k = 1;             ///< slots per token, in [1, min(C, max_k)]
  bool renormalize = false;
  bool select_on_logits = true;  ///< select on z (monotone gate, no bias) instead of gate(z) + bias
  bool nan_to_neg_inf = false;   ///< nan_policy::to_neg_inf (else NaN rows are reported)
  float route_scale = 1.0f;
  float temperature = 1.0f;
  const float* bias = nullptr;  ///< [C] selection bias, or null (zeros); device memory in a kernel
  std::int32_t n_groups = 0;    ///< 0: no group limit; else groups of C / n_groups columns
  std::int32_t topk_groups = 0;
  group_kind group_score = group_kind::top2_sum;
};

/// Scratch of one row: per-lane partials and row scalars (fixed size), then `p [C]`, `key [C]`,
/// `gkey [G]`, `gidx [G]`, `keep [G]` (carve_row_scratch). Shared memory in the kernel.
struct row_state {
  float partial[row_lanes];
  std::int32_t ipartial[row_lanes];
  float best_key[row_lanes];
  std::int32_t best_idx[row_lanes];
  std::int32_t idx[max_k];
  float w[max_k];
  float m;
  float total;
  float entropy;
  std::int32_t count;
  std::int32_t winner;
  std::int32_t nan_column;
  float* p;
  float* key;
  float* gkey;
  std::int32_t* gidx;
  std::uint8_t* keep;
};

/// Bytes of row scratch for C columns and G groups, a multiple of 16.
MOE_HOST_DEVICE constexpr std::size_t row_scratch_bytes(int columns, int groups) noexcept {
  const auto r16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
  const auto g = static_cast<std::size_t>(groups > 0 ? groups : 1);
  return r16(sizeof(row_state)) + 2 * r16(sizeof(float) * static_cast<std::size_t>(columns)) +
         r16(sizeof(float) * g) + r16(sizeof(std::int32_t) * g) + r16(g);
}

/// Lays the row scratch out over `bytes` (row_scratch_bytes(C, G) bytes, 16-byte aligned).
MOE_HOST_DEVICE inline row_state* carve_row_scratch(void* bytes, int columns, int groups) noexcept {
  const auto r16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
  const auto g = static_cast<std::size_t>(groups > 0 ? groups : 1);
  auto* base = static_cast<unsigned char*>(bytes);
  auto* s = reinterpret_cast<row_state*>(base);
  std::size_t at = r16(sizeof(row_state));
  s->p = reinterpret_cast<float*>(base + at);
  at += r16(sizeof(float) * static_cast<std::size_t>(columns));
  s->key = reinterpret_cast<float*>(base + at);
  at += r16(sizeof(float) * static_cast<std::size_t>(columns));
  s->gkey = reinterpret_cast<float*>(base + at);
  at += r16(sizeof(float) * g);
  s->gidx = reinterpret_cast<std::int32_t*>(base + at);
  at += r16(sizeof(std::int32_t) * g);
  s->keep = base + at;
  return s;
}

/// Where one row's results go: `experts [k]`, `weights [k]` (moe::no_expert / 0 beyond the
/// selected slots), the entropy and top-1 score the plan records, and the first NaN column
/// (-1 if none; under nan_policy::error the row then routes nowhere and the caller reports it).
struct row_output {
  std::int32_t* experts;
  float* weights;
  float* entropy;
  float* top_score;
  std::int32_t* nan_column;
};

/// Score of one group of n keys: its largest (group_kind::max, or a group of one) or the sum of
/// its two largest (moe::group_limited::group_value).
MOE_HOST_DEVICE inline float group_value(const float* key, int n, group_kind mode) noexcept {
  float first = key[0], second = neg_inf();
  for (int i = 1; i < n; ++i) {
    if (key[i] > first) {
      second = first;
      first = key[i];
    } else if (key[i] > second) {
      second = key[i];
    }
  }
  if (mode == group_kind::max || n == 1) return first;
  return add(first, second);
}

/// Routes one row `z [C]` (modified in place: temperature, NaN mapping) by `pol`, with the
/// lanes of `ex` (see the top of this file). `s` is the row's scratch.
template <class Exec>
MOE_HOST_DEVICE void route_row(const Exec& ex, const row_policy& pol, float* z, row_state& s, const row_output& out) {
  const int C = pol.columns;
  const int K = pol.k;
  constexpr int L = row_lanes;
  // 1. Temperature (moe::top_k::scale_logits).
  if (pol.temperature != 1.0f) {
    ex.lanes([&](int lane) {
      for (int c = lane; c < C; c += L) z[c] = div(z[c], pol.temperature);
    });
  }
  // 2. NaN policy: the first NaN column of the row.
  ex.lanes([&](int lane) {
    std::int32_t first = -1;
    for (int c = lane; c < C; c += L) {
      if (is_nan(z[c])) {
        first = c;
        break;
      }
    }
    s.ipartial[lane] = first;
  });
  ex.lanes([&](int lane) {
    if (lane != 0) return;
    std::int32_t first = -1;
    for (int l = 0; l < L; ++l) {
      if (s.ipartial[l] >= 0 && (first < 0 || s.ipartial[l] < first)) first = s.ipartial[l];
    }
    s.nan_column = first;
  });
  const bool has_nan = s.nan_column >= 0;
  ex.lanes([&](int lane) {
    if (lane == 0) *out.nan_column = pol.nan_to_neg_inf ? -1 : s.nan_column;
    for (int i = lane; i < K; i += L) {
      out.experts[i] = -1;
      out.weights[i] = 0.0f;
    }
    if (has_nan && pol.nan_to_neg_inf) {
      for (int c = lane; c < C; c += L) z[c] = is_nan(z[c]) ? neg_inf() : z[c];
    }
  });
  if (has_nan && !pol.nan_to_neg_inf) {
    ex.lanes([&](int lane) {
      if (lane == 0) *out.entropy = 0.0f, *out.top_score = 0.0f;
    });
    return;  // reported: the host raises the router's error
  }
  // 3. Gate. The maximum first (exact in any order): an all -inf row is degenerate.
  ex.lanes([&](int lane) {
    float m = neg_inf();
    for (int c = lane; c < C; c += L) m = z[c] > m ? z[c] : m;
    s.partial[lane] = m;
  });
  ex.lanes([&](int lane) {
    if (lane != 0) return;
    float m = neg_inf();
    for (int l = 0; l < L; ++l) m = s.partial[l] > m ? s.partial[l] : m;
    s.m = m;
  });
  if (s.m == neg_inf()) {  // routes nowhere: entropy 0, top score 0, no slot
    ex.lanes([&](int lane) {
      if (lane == 0) *out.entropy = 0.0f, *out.top_score = 0.0f;
    });
    return;
  }
  float* p = s.p;
  if (pol.gate == gate_kind::softmax) {
    if (s.m == pos_inf()) {  // the +inf logits share the mass
      ex.lanes([&](int lane) {
        std::int32_t n = 0;
        for (int c = lane; c < C; c += L) n += z[c] == pos_inf();
        s.ipartial[lane] = n;
      });
      ex.lanes([&](int lane) {
        std::int32_t n = 0;
        for (int l = 0; l < L; ++l) n += s.ipartial[l];
        const float share = div(1.0f, static_cast<float>(n));
        for (int c = lane; c < C; c += L) p[c] = z[c] == pos_inf() ? share : 0.0f;
      });
    } else {
      ex.lanes([&](int lane) {
        float acc = 0.0f;
        for (int c = lane; c < C; c += L) {
          const float e = cuda::exp(sub(z[c], s.m));
          acc = add(acc, e);
          p[c] = e;
        }
        s.partial[lane] = acc;
      });
      ex.lanes([&](int lane) {
        const float inv = div(1.0f, tree(s.partial));
        for (int c = lane; c < C; c += L) p[c] = mul(p[c], inv);
      });
    }
    // Entropy of p (kernels::entropy).
    ex.lanes([&](int lane) {
      float acc = 0.0f;
      for (int c = lane; c < C; c += L) {
        const float l = p[c] >= min_normal() ? cuda::log(p[c]) : 0.0f;
        acc = fmadd(-p[c], l, acc);
      }
      s.partial[lane] = acc;
    });
    ex.lanes([&](int lane) {
      if (lane == 0) s.entropy = tree(s.partial);
    });
  } else {
    ex.lanes([&](int lane) {
      float acc = 0.0f;
      for (int c = lane; c < C; c += L) {
        p[c] = cuda::sigmoid(z[c]);
        acc = add(acc, p[c]);
      }
      s.partial[lane] = acc;
    });
    // Entropy of p / Σp (sigmoid_gate::entropy), 0 when the sum is not positive.
    ex.lanes([&](int lane) {
      const float total = tree(s.partial);
      float acc = 0.0f;
      if (total > 0.0f) {
        for (int c = lane; c < C; c += L) {
          const float q = div(p[c], total);
          const float l = q >= min_normal() ? cuda::log(q) : 0.0f;
          acc = fmadd(-q, l, acc);
        }
      }
      s.ipartial[lane] = total > 0.0f;
      s.best_key[lane] = acc;  // (best_key is free until selection)
    });
    ex.lanes([&](int lane) {
      if (lane == 0) s.entropy = s.ipartial[0] ? tree(s.best_key) : 0.0f;
    });
  }
  // 4. Selection keys.
  float* key = s.key;
  const float* b = pol.bias;
  if (pol.n_groups > 0) {
    const int G = pol.n_groups, g = C / G;
    ex.lanes([&](int lane) {
      for (int c = lane; c < C; c += L) key[c] = z[c] == neg_inf() ? neg_inf() : add(p[c], b ? b[c] : 0.0f);
    });
    ex.lanes([&](int lane) {
      for (int grp = lane; grp < G; grp += L) s.gkey[grp] = group_value(key + grp * g, g, pol.group_score);
    });
    ex.lanes([&](int lane) {
      if (lane != 0) return;
      int kept = serial_top_k(s.gkey, G, pol.topk_groups, s.gidx);
      for (int grp = 0; grp < G; ++grp) s.keep[grp] = 0;
      for (int i = 0; i < kept; ++i) s.keep[s.gidx[i]] = 1;
      for (int grp = 0; grp < G && kept < pol.topk_groups; ++grp) {
        if (s.gkey[grp] == neg_inf()) {
          s.keep[grp] = 1;
          ++kept;
        }
      }
    });
    ex.lanes([&](int lane) {
      for (int c = lane; c < C; c += L) {
        if (!s.keep[c / g]) key[c] = neg_inf();
        else if (pol.select_on_logits) key[c] = z[c];
      }
    });
  } else {
    ex.lanes([&](int lane) {
      for (int c = lane; c < C; c += L) {
        key[c] = pol.select_on_logits ? z[c] : (z[c] == neg_inf() ? neg_inf() : (b ? add(p[c], b[c]) : p[c]));
      }
    });
  }
  // 5. Selection: k rounds; each lane holds the best of its own columns (ascending scan, strict
  // >: the lower column wins ties), the round's winner is the best of the 16 (lower column on
  // ties), and its lane rescans. The same order as the scalar top_k: key descending, column
  // ascending, -inf never selected.
  ex.lanes([&](int lane) {
    float bk = neg_inf();
    std::int32_t bi = -1;
    for (int c = lane; c < C; c += L) {
      if (key[c] > bk) {
        bk = key[c];
        bi = c;
      }
    }
    s.best_key[lane] = bk;
    s.best_idx[lane] = bi;
  });
  for (int r = 0; r < K; ++r) {
    ex.lanes([&](int lane) {
      if (lane != 0) return;
      std::int32_t wi = -1;
      float wk = neg_inf();
      for (int l = 0; l < L; ++l) {
        const std::int32_t i = s.best_idx[l];
        if (i < 0) continue;
        if (wi < 0 || s.best_key[l] > wk || (s.best_key[l] == wk && i < wi)) {
          wi = i;
          wk = s.best_key[l];
        }
      }
      s.winner = wi;
      if (wi >= 0) s.idx[r] = wi;
      s.count = wi >= 0 ? r + 1 : r;
    });
    if (s.winner < 0) break;
    ex.lanes([&](int lane) {
      if (s.winner % L != lane) return;
      key[s.winner] = neg_inf();
      float bk = neg_inf();
      std::int32_t bi = -1;
      for (int c = lane; c < C; c += L) {
        if (key[c] > bk) {
          bk = key[c];
          bi = c;
        }
      }
      s.best_key[lane] = bk;
      s.best_idx[lane] = bi;
    });
  }
  // 6. Weigh (one lane: at most max_k values).
  ex.lanes([&](int lane) {
    if (lane != 0) return;
    const int n = s.count;
    const int first_null = C - pol.null_columns;
    *out.entropy = s.entropy;
    *out.top_score = n > 0 ? p[s.idx[0]] : 0.0f;
    for (int i = 0; i < n; ++i) s.w[i] = s.idx[i] >= first_null ? 0.0f : p[s.idx[i]];
    if (pol.renormalize) {
      const float total = canonical_sum(s.w, n);
      for (int i = 0; i < n; ++i) s.w[i] = total > 0.0f ? div(s.w[i], total) : 0.0f;
    }
    for (int i = 0; i < n; ++i) s.w[i] = mul(s.w[i], pol.route_scale);
    for (int i = 0; i < n; ++i) {
      const bool null = s.idx[i] >= first_null;
      out.experts[i] = null ? -1 : s.idx[i];
      out.weights[i] = null ? 0.0f : s.w[i];
    }
  });
}

// ---------------------------------------------------------------------------------------------
// The grid of the routing kernel: blocks of `rows_per_block` rows, 16 threads a row.

/// Rows of one block of the routing kernel (128 threads).
inline constexpr int routing_rows_per_block = 8;

/// Row and lane of thread `thread` of block `block`.
struct row_lane {
  std::int64_t row;
  int lane;
  int row_in_block;
};
MOE_HOST_DEVICE inline row_lane routing_row_of(std::int64_t block, int thread) noexcept {
  const int rb = thread / row_lanes;
  return {block * routing_rows_per_block + rb, thread % row_lanes, rb};
}
/// Blocks of the routing kernel for T rows.
MOE_HOST_DEVICE inline std::int64_t routing_blocks(std::int64_t rows) noexcept {
  return (rows + routing_rows_per_block - 1) / routing_rows_per_block;
}

/// The outputs of row t of a batch: `experts, weights [T × k]`, `entropy, top_score,
/// nan_column [T]`.
struct batch_output {
  std::int32_t* experts;
  float* weights;
  float* entropy;
  float* top_score;
  std::int32_t* nan_column;

  MOE_HOST_DEVICE row_output row(std::int64_t t, int k) const noexcept {
    return {experts + t * k, weights + t * k, entropy + t, top_score + t, nan_column + t};
  }
};

// ---------------------------------------------------------------------------------------------
// Counting sort by expert (routing_plan::build_expert_major): stable, token order kept inside
// each expert; slots with no expert or weight 0 get no entry. Over the A = T·K slots in
// token-major order, cut into tiles of `tile` slots:
//   1. sort_count_tile(i):    counts[i][e] = entries of expert e in tile i (one thread a tile)
//   2. sort_scan_expert(e):   counts[i][e] -> entries of expert e in tiles before i; totals[e]
//   3. sort_offsets():        offsets[E + 1] = exclusive scan of totals (one thread)
//   4. sort_place_tile(i):    places the tile's entries in slot order at offsets[e] + counts[i][e]
// Integer counts only: the result does not depend on the tile size or the thread schedule.

/// One entry of the expert-major view (layout of moe::expert_entry).
struct sort_entry {
  std::int32_t token;
  std::int32_t slot;
  float weight;
};

/// Step 1 for tile `i`; `bad` receives the lowest slot index whose expert is out of range
/// (min-combined by the caller's threads; -1 stays when none).
MOE_HOST_DEVICE inline void sort_count_tile(std::int64_t i, std::int64_t tile, const std::int32_t* experts,
                                            const float* weights, std::int64_t slots, int E, std::int32_t* counts,
                                            std::int64_t* bad_slot) noexcept {
  std::int32_t* row = counts + i * E;
  for (int e = 0; e < E; ++e) row[e] = 0;
  const std::int64_t end = (i + 1) * tile < slots ? (i + 1) * tile : slots;
  for (std::int64_t a = i * tile; a < end; ++a) {
    const std::int32_t e = experts[a];
    if (e == -1) continue;
    if (e < 0 || e >= E) {
      *bad_slot = a;  // the first of this tile; the caller keeps the lowest
      return;
    }
    if (weights[a] != 0.0f) ++row[e];
  }
}

/// Step 2 for expert `e` over `tiles` tiles.
MOE_HOST_DEVICE inline void sort_scan_expert(int e, std::int64_t tiles, int E, std::int32_t* counts,
                                             std::int64_t* totals) noexcept {
  std::int64_t run = 0;
  for (std::int64_t i = 0; i < tiles; ++i) {
    const std::int32_t n = counts[i * E + e];
    counts[i * E + e] = static_cast<std::int32_t>(run);
    run += n;
  }
  totals[e] = run;
}

/// Step 3.
MOE_HOST_DEVICE inline void sort_offsets(int E, const std::int64_t* totals, std::int64_t* offsets) noexcept {
  offsets[0] = 0;
  for (int e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + totals[e];
}

/// Step 4 for tile `i` (`counts` as step 2 left it; used as the tile's cursors).
MOE_HOST_DEVICE inline void sort_place_tile(std::int64_t i, std::int64_t tile, const std::int32_t* experts,
                                            const float* weights, std::int64_t slots, int K, int E,
                                            std::int32_t* counts, const std::int64_t* offsets,
                                            sort_entry* entries) noexcept {
  std::int32_t* cursor = counts + i * E;
  const std::int64_t end = (i + 1) * tile < slots ? (i + 1) * tile : slots;
  for (std::int64_t a = i * tile; a < end; ++a) {
    const std::int32_t e = experts[a];
    if (e < 0 || e >= E || weights[a] == 0.0f) continue;
    entries[offsets[e] + cursor[e]++] = {static_cast<std::int32_t>(a / K), static_cast<std::int32_t>(a % K),
                                         weights[a]};
  }
}

/// Tiles of A slots.
MOE_HOST_DEVICE inline std::int64_t sort_tiles(std::int64_t slots, std::int64_t tile) noexcept {
  return (slots + tile - 1) / tile;
}

}  // namespace moe::kernels::cuda
