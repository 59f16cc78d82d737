// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The expert side of moe::device::cuda (docs/architecture.md §5.4): gather of token rows in
// expert-major order into fixed-size row tiles, the expert GEMMs (cuBLAS, one batched call per
// projection over the tiles: bf16 / fp16 inputs with fp32 accumulation, or fp32), the gated
// activations (SwiGLU and the others) and the weighted combine in a fixed order.
//
// Determinism and batch invariance: every tile is the same GEMM shape (tile_rows × n × k), so a
// row's result depends on its own row and its expert's weights only, provided cuBLAS runs the
// same algorithm for every batch count (it has no reason to split K for these shapes, but that is
// cuBLAS's choice: bench/gpu/run.sh checks it). The combine adds a token's slots in slot order
// with fused steps, one thread per output element: no atomics.
//
// Status: compiled by nvcc; NOT run in this repository's CI (no GPU).

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "moe/device/cuda/routing_math.hpp"

namespace moe::kernels::cuda {

/// Rows of one GEMM tile (every tile of every expert has this many rows; the last tile of an
/// expert is padded with zero rows).
inline constexpr int tile_rows = 128;

/// cuBLAS data type of an element type.
template <class T>
constexpr cudaDataType_t cuda_type() noexcept {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else {
    static_assert(std::is_same_v<T, __half>, "moe::kernels::cuda: element types are float, __nv_bfloat16 and __half");
    return CUDA_R_16F;
  }
}

template <class T>
__device__ inline T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return __float2half_rn(x);
}

/// The activation of a gated FFN: `act = f(gate) · up`.
enum class activation : std::int32_t {
  swiglu = 0,          ///< silu(g) · u (Mixtral, Qwen, DeepSeek, OLMoE)
  geglu = 1,           ///< gelu_erf(g) · u
  geglu_tanh = 2,      ///< gelu_tanh(g) · u
  clamped_swiglu = 3,  ///< gpt-oss: g = min(g, limit), u = clamp(u, ±limit), g·sigmoid(alpha g) · (u + 1)
  relu2 = 4            ///< relu(g)^2 · u
};

/// Parameters of clamped_swiglu (gpt-oss: alpha 1.702, limit 7).
struct activation_params {
  float alpha = 1.702f;
  float limit = 7.0f;
};

/// act = f(g) · u for one element, in fp32.
MOE_HOST_DEVICE inline float gated(activation a, float g, float u, activation_params prm) noexcept {
  switch (a) {
    case activation::swiglu: return mul(cuda::silu(g), u);
    case activation::geglu: {
#if defined(__CUDA_ARCH__)
      const float phi = 0.5f * (1.0f + erff(g * 0.70710678118654752f));
#else
      const float phi = 0.5f * (1.0f + std::erf(g * 0.70710678118654752f));
#endif
      return mul(mul(g, phi), u);
    }
    case activation::geglu_tanh: {
      const float inner = 0.79788456080286536f * fmadd(0.044715f * g, mul(g, g), g);
#if defined(__CUDA_ARCH__)
      const float t = tanhf(inner);
#else
      const float t = std::tanh(inner);
#endif
      return mul(mul(0.5f * g, add(1.0f, t)), u);
    }
    case activation::clamped_swiglu: {
      const float gc = min_(g, prm.limit);
      const float uc = max_(min_(u, prm.limit), -prm.limit);
      return mul(mul(gc, cuda::sigmoid(mul(prm.alpha, gc))), add(uc, 1.0f));
    }
    case activation::relu2: {
      const float r = g > 0.0f ? g : 0.0f;
      return mul(mul(r, r), u);
    }
  }
  return 0.0f;
}

// ---- Kernels (one thread per element; grid-stride loops).

/// xg[row(i)] = x[token(i)] for the expert-major entries, converted to T; `dst_row [A]` is the
/// padded tile row of each entry.
template <class T>
__global__ void gather_kernel(const float* x, std::int64_t ld_x, const sort_entry* entries, const std::int64_t* dst_row,
                              std::int64_t A, int d, T* xg) {
  const std::int64_t n = A * d;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t a = i / d;
    const int c = static_cast<int>(i % d);
    xg[dst_row[a] * d + c] = from_float<T>(x[entries[a].token * ld_x + c]);
  }
}

/// act[r][j] = f(h[r][j], h[r][f + j]) for `rows` rows of `h [rows × 2f]` (fp32), into T.
template <class T>
__global__ void activation_kernel(const float* h, std::int64_t rows, int f, activation a, activation_params prm, T* act) {
  const std::int64_t n = rows * f;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / f;
    const int j = static_cast<int>(i % f);
    act[i] = from_float<T>(gated(a, h[r * 2 * f + j], h[r * 2 * f + f + j], prm));
  }
}

/// Grid of a grid-stride elementwise kernel over n elements.
inline unsigned elementwise_blocks(std::int64_t n) noexcept {
  const std::int64_t b = (n + 255) / 256;
  return static_cast<unsigned>(b < 1 ? 1 : (b > 65535 ? 65535 : b));
}

// ---- GEMMs.

/// `C_i = A_i · B_iᵀ` for `count` tiles, row-major: `B_i [tile_rows × k]` (token rows, T),
/// `A_i [n × k]` (an expert's weight as checkpoints store it, T), `C_i [tile_rows × n]` (fp32),
/// accumulation in fp32. One cublasGemmBatchedEx call; the pointer arrays are device memory.
template <class T>
cublasStatus_t tile_gemm(cublasHandle_t handle, int n, int k, const T* const* weights, const T* const* rows,
                         float* const* out, int count) {
  if (count == 0) return CUBLAS_STATUS_SUCCESS;
  const float alpha = 1.0f, beta = 0.0f;
  // Column-major view: C_iᵀ [n × tile_rows] = A_i [k × n]ᵀ · B_iᵀ [k × tile_rows].
  return cublasGemmBatchedEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, tile_rows, k, &alpha,
                             reinterpret_cast<const void* const*>(weights), cuda_type<T>(), k,
                             reinterpret_cast<const void* const*>(rows), cuda_type<T>(), k, &beta,
                             reinterpret_cast<void* const*>(out), CUDA_R_32F, n, count, CUBLAS_COMPUTE_32F,
                             CUBLAS_GEMM_DEFAULT);
}

/// Dense `C [m × n] = B [m × k] · A [n × k]ᵀ` (row-major, fp32 out, fp32 accumulation): the
/// dense baseline of the benchmark.
template <class T>
cublasStatus_t dense_gemm(cublasHandle_t handle, int m, int n, int k, const T* a, const T* b, float* c) {
  const float alpha = 1.0f, beta = 0.0f;
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, a, cuda_type<T>(), k, b, cuda_type<T>(), k, &beta,
                      c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace moe::kernels::cuda
