// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// moe::device::cuda and its expert bank moe::cuda_swiglu_experts<T> (docs/architecture.md §5.4).
//
//   route_logits(policy, z, experts, plan)  fused routing kernel (routing_math.hpp) + counting
//                                           sort on the GPU, into a cuda_plan (device memory)
//   dispatch(plan, x, bank, y, ws)          gather into row tiles -> gate|up GEMM (cuBLAS) ->
//                                           activation -> down GEMM -> fixed-order combine
//   run(pass, y, ws)                        moe::device_for: the same from a host routing_plan
//                                           (its expert-major view is uploaded, not re-sorted);
//                                           pass.x and y hold DEVICE pointers
//
// Status, honestly: this compiles with nvcc (CUDA 13, sm_80 and sm_90) in every build that has
// the toolkit, and the routing and sorting logic is tested on the host against the CPU routers
// bit for bit in every build. Nothing in this file has been run on a GPU in this repository's CI;
// bench/gpu/run.sh is the prepared check (routing ids against the CPU on 10^6 rows, layer NMSE,
// OLMoE-shape timing against dense cuBLAS). Shared experts, per-token masks and output scales are
// not supported by run() yet (moe::error).

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/device/cuda/ffn.cuh"
#include "moe/device/cuda/memory.cuh"
#include "moe/device/cuda/routing.cuh"
#include "moe/device/cuda/routing_math.hpp"
#include "moe/plan.hpp"

namespace moe {

/// SwiGLU (or another gated activation) experts in device memory, element type T (float,
/// __nv_bfloat16 or __half). Built from the checkpoint layout of moe::swiglu_experts (host
/// memory, fp32): `gate, up [E·f × d]`, `down [E·d × f]`, row-major, experts stacked; stored as
/// `gate|up [E × 2f × d]` (one GEMM gives both) and `down [E × d × f]`.
template <class T>
class cuda_swiglu_experts {
 public:
  using memory_space = cuda_memory;
  using value_type = T;

  cuda_swiglu_experts(const float* gate, const float* up, const float* down, index experts, index hidden,
                      index intermediate, kernels::cuda::activation act = kernels::cuda::activation::swiglu,
                      kernels::cuda::activation_params params = {})
      : m_experts(experts), m_hidden(hidden), m_intermediate(intermediate), m_act(act), m_params(params) {
    constexpr const char* where = "moe::cuda_swiglu_experts";
    if (experts < 1) detail::fail_parameter(error_id::shape, where, "experts", ">= 1", experts);
    if (hidden < 1) detail::fail_parameter(error_id::shape, where, "hidden", ">= 1", hidden);
    if (intermediate < 1) detail::fail_parameter(error_id::shape, where, "intermediate", ">= 1", intermediate);
    const index d = hidden, f = intermediate;
    std::vector<T> gu(static_cast<std::size_t>(experts * 2 * f * d)), dn(static_cast<std::size_t>(experts * d * f));
    for (index e = 0; e < experts; ++e) {
      for (index r = 0; r < f; ++r) {
        for (index c = 0; c < d; ++c) {
          gu[static_cast<std::size_t>((e * 2 * f + r) * d + c)] = convert(gate[(e * f + r) * d + c]);
          gu[static_cast<std::size_t>((e * 2 * f + f + r) * d + c)] = convert(up[(e * f + r) * d + c]);
        }
      }
    }
    for (index i = 0; i < experts * d * f; ++i) dn[static_cast<std::size_t>(i)] = convert(down[i]);
    m_gate_up.upload(gu.data(), static_cast<index>(gu.size()));
    m_down.upload(dn.data(), static_cast<index>(dn.size()));
    detail::cuda_check(cudaStreamSynchronize(nullptr), where);
  }

  /// From Eigen matrices in the checkpoint layout (host memory).
  cuda_swiglu_experts(const_matrix_map<float> gate, const_matrix_map<float> up, const_matrix_map<float> down,
                      kernels::cuda::activation act = kernels::cuda::activation::swiglu)
      : cuda_swiglu_experts(contiguous(gate, "gate"), contiguous(up, "up"), contiguous(down, "down"),
                            down.cols() > 0 ? gate.rows() / down.cols() : 0, gate.cols(), down.cols(), act) {}

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] index hidden() const noexcept { return m_hidden; }
  [[nodiscard]] index intermediate() const noexcept { return m_intermediate; }
  [[nodiscard]] kernels::cuda::activation activation() const noexcept { return m_act; }
  [[nodiscard]] kernels::cuda::activation_params activation_params() const noexcept { return m_params; }
  /// Expert e's fused `gate|up [2f × d]` (device memory).
  [[nodiscard]] const T* gate_up(index e) const noexcept { return m_gate_up.data() + e * 2 * m_intermediate * m_hidden; }
  /// Expert e's `down [d × f]` (device memory).
  [[nodiscard]] const T* down(index e) const noexcept { return m_down.data() + e * m_hidden * m_intermediate; }

 private:
  static T convert(float x) {
    if constexpr (std::is_same_v<T, float>) return x;
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
    else return __float2half_rn(x);
  }
  static const float* contiguous(const_matrix_map<float> m, const char* name) {
    if (m.rows() > 1 && m.outerStride() != m.cols()) {
      detail::fail_parameter(error_id::shape, "moe::cuda_swiglu_experts", detail::concat(name, ".outerStride()"),
                             detail::concat(m.cols(), " (contiguous rows)"), m.outerStride());
    }
    return m.data();
  }

  index m_experts, m_hidden, m_intermediate;
  kernels::cuda::activation m_act;
  kernels::cuda::activation_params m_params;
  cuda_buffer<T> m_gate_up;
  cuda_buffer<T> m_down;
};

static_assert(expert_bank<cuda_swiglu_experts<float>>);
static_assert(expert_bank<cuda_swiglu_experts<__nv_bfloat16>>);

/// A routing plan in device memory, as the GPU routing produces it: token-major `experts,
/// weights [T × K]`, `entropy, top_score, nan_column [T]`, and the expert-major view `offsets
/// [E + 1]`, `entries`.
struct cuda_plan {
  index tokens = 0, slots = 0, experts = 0;
  cuda_buffer<std::int32_t> expert_ids;
  cuda_buffer<float> weights;
  cuda_buffer<float> entropy;
  cuda_buffer<float> top_score;
  cuda_buffer<std::int32_t> nan_column;
  cuda_buffer<std::int64_t> offsets;
  cuda_buffer<kernels::cuda::sort_entry> entries;
  cuda_buffer<std::int32_t> sort_counts;
  cuda_buffer<std::int64_t> sort_totals;
  cuda_buffer<unsigned long long> bad_slot;
};

namespace detail {

__global__ static void cuda_rows_kernel(const std::int64_t* offsets, int E, const std::int64_t* padded,
                                        const kernels::cuda::sort_entry* entries, std::int64_t A, int K,
                                        std::int64_t* dst_row, std::int64_t* slot_entry) {
  const std::int64_t a = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (a >= A) return;
  int lo = 0, hi = E;  // the expert e with offsets[e] <= a < offsets[e + 1]
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (offsets[mid] <= a) lo = mid;
    else hi = mid;
  }
  dst_row[a] = padded[lo] + (a - offsets[lo]);
  slot_entry[static_cast<std::int64_t>(entries[a].token) * K + entries[a].slot] = a;
}

__global__ static void cuda_combine_kernel(const float* out, const std::int64_t* slot_entry, const std::int64_t* dst_row,
                                           const kernels::cuda::sort_entry* entries, std::int64_t T, int K, int d,
                                           float* y, std::int64_t ld_y) {
  const std::int64_t n = T * d;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t t = i / d;
    const int c = static_cast<int>(i % d);
    float acc = 0.0f;
    for (int s = 0; s < K; ++s) {  // slot order: fixed, batch invariant
      const std::int64_t a = slot_entry[t * K + s];
      if (a >= 0) acc = kernels::cuda::fmadd(entries[a].weight, out[dst_row[a] * d + c], acc);
    }
    y[t * ld_y + c] = acc;
  }
}

__global__ static void cuda_add_kernel(const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float* out,
                                       std::int64_t ldo, std::int64_t rows, std::int64_t cols, const std::uint8_t* mask,
                                       bool accumulate) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = i / cols, c = i % cols;
    if (accumulate) {
      if (mask[r]) out[r * ldo + c] = kernels::cuda::add(out[r * ldo + c], a[r * lda + c]);
    } else {
      out[r * ldo + c] = kernels::cuda::add(a[r * lda + c], b[r * ldb + c]);
    }
  }
}

struct cublas_handle {
  cublasHandle_t handle = nullptr;
  explicit cublas_handle(cudaStream_t stream) {
    if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) throw_error(error_id::config, "moe::device::cuda: cublasCreate failed");
    cublasSetStream(handle, stream);
    cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);  // no TF32 for fp32 experts
  }
  cublas_handle(const cublas_handle&) = delete;
  cublas_handle& operator=(const cublas_handle&) = delete;
  ~cublas_handle() {
    if (handle) cublasDestroy(handle);
  }
};

inline void cublas_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) throw_error(error_id::config, concat(what, ": cuBLAS status ", static_cast<int>(st)));
}

}  // namespace detail

namespace device {

/// The CUDA device: memory in the cuda_memory space, routing, permutation, expert GEMMs and
/// combine on one stream (held by the instance) with one cuBLAS handle. Copies share the handle.
class cuda {
 public:
  using device_type = cuda;
  using memory_space = cuda_memory;
  using workspace_type = cuda_workspace;
  static constexpr bool is_gpu = true;
  static constexpr const char* name() noexcept { return "cuda"; }

  /// On `stream` (default stream when null) of the current CUDA device.
  explicit cuda(cudaStream_t stream = nullptr)
      : m_stream(stream), m_blas(std::make_shared<detail::cublas_handle>(stream)) {}

  [[nodiscard]] cudaStream_t stream() const noexcept { return m_stream; }
  /// GPUs visible to this process (0 when there is none or no driver).
  [[nodiscard]] static int device_count() noexcept {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  }

  /// Every expert of the bank is local.
  template <expert_bank Bank>
  [[nodiscard]] static index num_experts(const Bank& bank) noexcept {
    return bank.num_experts();
  }

  /// Routes raw logits `z [T × C]` (device memory; modified in place: temperature, NaN mapping)
  /// by `policy` (kernels::cuda::policy_of(router), host_emulation.hpp; its bias must be device
  /// memory of C floats or null) into `plan`, and sorts it by expert. Throws moe::error for a
  /// NaN under nan_policy::error (after the kernel, naming the lowest token) or a bad policy.
  void route_logits(kernels::cuda::row_policy policy, cuda_matrix_view<float> z, index experts, cuda_plan& plan) const {
    constexpr const char* where = "moe::device::cuda::route_logits";
    namespace kc = kernels::cuda;
    detail::check_extent(where, "z.cols()", z.cols(), policy.columns);
    if (z.rows() > 1 && z.outerStride() != z.cols()) {
      detail::fail_parameter(error_id::shape, where, "z.outerStride()", "z.cols() (contiguous rows)", z.outerStride());
    }
    const index T = z.rows(), K = policy.k, E = experts;
    plan.tokens = T;
    plan.slots = K;
    plan.experts = E;
    plan.expert_ids.reserve(std::max<index>(T * K, 1));
    plan.weights.reserve(std::max<index>(T * K, 1));
    plan.entropy.reserve(std::max<index>(T, 1));
    plan.top_score.reserve(std::max<index>(T, 1));
    plan.nan_column.reserve(std::max<index>(T, 1));
    plan.offsets.reserve(E + 1);
    plan.entries.reserve(std::max<index>(T * K, 1));
    const std::int64_t tile = kc::sort_tile_for(T * K, static_cast<int>(E));
    plan.sort_counts.reserve(std::max<std::int64_t>(kc::sort_tiles(T * K, tile) * E, 1));
    plan.sort_totals.reserve(E);
    plan.bad_slot.reserve(1);
    detail::cuda_check(kc::launch_routing(policy, z.data(), T,
                                          {plan.expert_ids.data(), plan.weights.data(), plan.entropy.data(),
                                           plan.top_score.data(), plan.nan_column.data()},
                                          m_stream),
                       where);
    if (!policy.nan_to_neg_inf && T > 0) {
      std::vector<std::int32_t> nan(static_cast<std::size_t>(T));
      plan.nan_column.download(nan.data(), T, m_stream);
      for (index t = 0; t < T; ++t) {
        if (nan[static_cast<std::size_t>(t)] >= 0) {
          detail::throw_error(error_id::input, detail::concat(where, ": parameter 'z' gives a NaN router logit (token ", t,
                                                              ", expert ", nan[static_cast<std::size_t>(t)], ")"));
        }
      }
    }
    detail::cuda_check(kc::launch_sort(plan.expert_ids.data(), plan.weights.data(), T, static_cast<int>(K),
                                       static_cast<int>(E), tile,
                                       {plan.sort_counts.data(), plan.sort_totals.data(), plan.bad_slot.data()},
                                       plan.offsets.data(), plan.entries.data(), m_stream),
                       where);
  }

  /// Bytes of workspace that dispatch() takes for `assignments` rows over a bank.
  template <class T>
  [[nodiscard]] static std::size_t dispatch_bytes(index tokens, index slots, const cuda_swiglu_experts<T>& bank) {
    const auto r = [](std::size_t n) { return (n + 255) / 256 * 256; };
    const auto A = static_cast<std::size_t>(std::max<index>(tokens * slots, 1));
    const auto E = static_cast<std::size_t>(bank.num_experts());
    const std::size_t padded = A + E * (kernels::cuda::tile_rows - 1) + kernels::cuda::tile_rows;
    const auto d = static_cast<std::size_t>(bank.hidden()), f = static_cast<std::size_t>(bank.intermediate());
    const std::size_t tiles = padded / kernels::cuda::tile_rows + 1;
    return r(sizeof(T) * padded * d) + r(sizeof(float) * padded * 2 * f) + r(sizeof(T) * padded * f) +
           r(sizeof(float) * padded * d) + r(sizeof(std::int64_t) * A) +
           r(sizeof(std::int64_t) * static_cast<std::size_t>(std::max<index>(tokens * slots, 1))) +
           r(sizeof(std::int64_t) * (E + 1)) + 2 * r(sizeof(std::int64_t) * (E + 1)) + 6 * r(sizeof(void*) * tiles);
  }

  /// `y = Σ_slots weight · Expert(x)` for a plan routed on the GPU: x [T × d], y [T × d] in
  /// device memory (y overwritten). Synchronises once (the per-expert row counts size the GEMM
  /// batch).
  template <class T>
  void dispatch(const cuda_plan& plan, cuda_matrix_view<const float> x, const cuda_swiglu_experts<T>& bank,
                cuda_matrix_view<float> y, cuda_workspace& ws) const {
    std::vector<std::int64_t> offsets(static_cast<std::size_t>(plan.experts + 1));
    plan.offsets.download(offsets.data(), plan.experts + 1, m_stream);
    dispatch_impl(offsets.data(), plan.offsets.data(), plan.entries.data(), plan.tokens, plan.slots, x, bank, y, ws);
  }

  /// Bytes of workspace that run() takes for a pass.
  template <class T>
  [[nodiscard]] std::size_t workspace_bytes(const layer_pass<cuda_swiglu_experts<T>>& pass) const {
    const index A = pass.plan->total_assignments();
    return dispatch_bytes(pass.plan->num_tokens(), pass.plan->max_slots(), *pass.experts) +
           (static_cast<std::size_t>(A) * sizeof(kernels::cuda::sort_entry) + 255) / 256 * 256 + 256;
  }

  /// moe::device_for: `y = Σ_slots weight · Expert(x)` from a host plan (expert-major view
  /// built) whose view is uploaded; pass.x and y are DEVICE pointers in Eigen maps. Shared
  /// experts, masks and output scales: moe::error (not supported yet).
  template <class T>
  void run(const layer_pass<cuda_swiglu_experts<T>>& pass, matrix_map<float> y, cuda_workspace& ws) const {
    constexpr const char* where = "moe::device::cuda::run";
    const routing_plan& plan = *pass.plan;
    if (!plan.has_expert_major()) {
      detail::throw_error(error_id::plan, detail::concat(where, ": parameter 'plan' must have its expert-major view built"));
    }
    if (pass.shared || pass.mask || plan.has_output_scale() || plan.has_identity() || plan.input_weighted()) {
      detail::throw_error(error_id::config, detail::concat(where, ": shared experts, token masks, output scales, identity "
                                                                  "experts and input-weighted plans are not supported on "
                                                                  "moe::device::cuda yet"));
    }
    detail::check_extent(where, "plan.num_experts()", plan.num_experts(), pass.experts->num_experts());
    ws.reserve(workspace_bytes(pass));
    const index E = plan.num_experts();
    const auto entries = plan.entries();
    static_assert(sizeof(kernels::cuda::sort_entry) == sizeof(expert_entry));
    auto* dev_entries = ws.take<kernels::cuda::sort_entry>(std::max<std::size_t>(entries.size(), 1));
    auto* dev_offsets = ws.take<std::int64_t>(static_cast<std::size_t>(E + 1));
    static_assert(sizeof(index) == sizeof(std::int64_t));
    detail::cuda_check(cudaMemcpyAsync(dev_entries, entries.data(), entries.size() * sizeof(expert_entry),
                                       cudaMemcpyHostToDevice, m_stream), where);
    detail::cuda_check(cudaMemcpyAsync(dev_offsets, plan.offsets().data(), static_cast<std::size_t>(E + 1) * sizeof(index),
                                       cudaMemcpyHostToDevice, m_stream), where);
    const auto* host_offsets = reinterpret_cast<const std::int64_t*>(plan.offsets().data());
    dispatch_impl(host_offsets, dev_offsets, dev_entries, plan.num_tokens(), plan.max_slots(),
                  {pass.x.data(), pass.x.rows(), pass.x.cols(), pass.x.outerStride()}, *pass.experts,
                  {y.data(), y.rows(), y.cols(), y.outerStride()}, ws, /*reserved=*/true);
  }

  /// `out = a + b` (device pointers in Eigen maps).
  void add(const_matrix_map<float> a, const_matrix_map<float> b, matrix_map<float> out) const {
    const std::int64_t n = a.rows() * a.cols();
    if (n == 0) return;
    detail::cuda_add_kernel<<<kernels::cuda::elementwise_blocks(n), 256, 0, m_stream>>>(
        a.data(), a.outerStride(), b.data(), b.outerStride(), out.data(), out.outerStride(), a.rows(), a.cols(), nullptr, false);
    detail::cuda_check(cudaGetLastError(), "moe::device::cuda::add");
  }

  /// `out_t += a_t` for the rows with `mask[t] != 0` (device pointers; mask in device memory).
  void accumulate(const_matrix_map<float> a, const std::uint8_t* mask, matrix_map<float> out) const {
    const std::int64_t n = a.rows() * a.cols();
    if (n == 0) return;
    detail::cuda_add_kernel<<<kernels::cuda::elementwise_blocks(n), 256, 0, m_stream>>>(
        a.data(), a.outerStride(), nullptr, 0, out.data(), out.outerStride(), a.rows(), a.cols(), mask, true);
    detail::cuda_check(cudaGetLastError(), "moe::device::cuda::accumulate");
  }

 private:
  // Dispatch over an expert-major view: `host_offsets` (host copy of offsets [E + 1]) sizes the
  // tiles; `offsets`, `entries` are device memory.
  template <class T>
  void dispatch_impl(const std::int64_t* host_offsets, const std::int64_t* offsets, const kernels::cuda::sort_entry* entries,
                     index T_tokens, index K, cuda_matrix_view<const float> x, const cuda_swiglu_experts<T>& bank,
                     cuda_matrix_view<float> y, cuda_workspace& ws, bool reserved = false) const {
    namespace kc = kernels::cuda;
    constexpr const char* where = "moe::device::cuda::dispatch";
    detail::check_extent(where, "x.cols()", x.cols(), bank.hidden());
    detail::check_extent(where, "y.rows()", y.rows(), T_tokens);
    detail::check_extent(where, "y.cols()", y.cols(), bank.hidden());
    const index E = bank.num_experts(), d = bank.hidden(), f = bank.intermediate();
    const std::int64_t A = host_offsets[E];
    if (!reserved) ws.reserve(dispatch_bytes(T_tokens, K, bank));
    // Padded tiles: expert e's rows start at padded[e], a multiple of tile_rows.
    std::vector<std::int64_t> padded(static_cast<std::size_t>(E + 1));
    padded[0] = 0;
    for (index e = 0; e < E; ++e) {
      const std::int64_t n = host_offsets[e + 1] - host_offsets[e];
      padded[static_cast<std::size_t>(e + 1)] = padded[static_cast<std::size_t>(e)] + (n + kc::tile_rows - 1) / kc::tile_rows * kc::tile_rows;
    }
    const std::int64_t rows = std::max<std::int64_t>(padded[static_cast<std::size_t>(E)], 1);
    T* xg = ws.take<T>(static_cast<std::size_t>(rows * d));            // [rows × d]
    float* h = ws.take<float>(static_cast<std::size_t>(rows * 2 * f));  // [rows × 2f]
    T* act = ws.take<T>(static_cast<std::size_t>(rows * f));           // [rows × f]
    float* out = ws.take<float>(static_cast<std::size_t>(rows * d));   // [rows × d]
    auto* dst_row = ws.take<std::int64_t>(static_cast<std::size_t>(std::max<std::int64_t>(A, 1)));
    auto* slot_entry = ws.take<std::int64_t>(static_cast<std::size_t>(std::max<index>(T_tokens * K, 1)));
    auto* dev_padded = ws.take<std::int64_t>(static_cast<std::size_t>(E + 1));
    // Tile lists: (weights, rows, out) of each tile, for both GEMMs.
    m_ptrs.clear();
    std::vector<const void*> gu_w, gu_x, dn_w, dn_x;
    std::vector<void*> gu_o, dn_o;
    for (index e = 0; e < E; ++e) {
      for (std::int64_t r = padded[static_cast<std::size_t>(e)]; r < padded[static_cast<std::size_t>(e + 1)]; r += kc::tile_rows) {
        gu_w.push_back(bank.gate_up(e));
        gu_x.push_back(xg + r * d);
        gu_o.push_back(h + r * 2 * f);
        dn_w.push_back(bank.down(e));
        dn_x.push_back(act + r * f);
        dn_o.push_back(out + r * d);
      }
    }
    const auto tiles = static_cast<int>(gu_w.size());
    for (auto* v : {&gu_w, &gu_x, &dn_w, &dn_x}) m_ptrs.insert(m_ptrs.end(), v->begin(), v->end());
    for (auto* v : {&gu_o, &dn_o}) m_ptrs.insert(m_ptrs.end(), v->begin(), v->end());
    auto** dev_ptrs = ws.take<void*>(std::max<std::size_t>(m_ptrs.size(), 1));
    detail::cuda_check(cudaMemcpyAsync(dev_ptrs, m_ptrs.data(), m_ptrs.size() * sizeof(void*), cudaMemcpyHostToDevice, m_stream), where);
    detail::cuda_check(cudaMemcpyAsync(dev_padded, padded.data(), padded.size() * sizeof(std::int64_t), cudaMemcpyHostToDevice, m_stream), where);
    detail::cuda_check(cudaMemsetAsync(xg, 0, static_cast<std::size_t>(rows * d) * sizeof(T), m_stream), where);
    detail::cuda_check(cudaMemsetAsync(slot_entry, 0xff, static_cast<std::size_t>(std::max<index>(T_tokens * K, 1)) * sizeof(std::int64_t), m_stream), where);
    if (A > 0) {
      detail::cuda_rows_kernel<<<static_cast<unsigned>((A + 255) / 256), 256, 0, m_stream>>>(
          offsets, static_cast<int>(E), dev_padded, entries, A, static_cast<int>(K), dst_row, slot_entry);
      kc::gather_kernel<T><<<kc::elementwise_blocks(A * d), 256, 0, m_stream>>>(x.data(), x.outerStride(), entries, dst_row, A,
                                                                               static_cast<int>(d), xg);
      detail::cuda_check(cudaGetLastError(), where);
      const auto* const* p = reinterpret_cast<const T* const*>(dev_ptrs);
      detail::cublas_check(kc::tile_gemm<T>(m_blas->handle, static_cast<int>(2 * f), static_cast<int>(d), p, p + tiles,
                                            reinterpret_cast<float* const*>(dev_ptrs + 4 * tiles), tiles), where);
      kc::activation_kernel<T><<<kc::elementwise_blocks(rows * f), 256, 0, m_stream>>>(h, rows, static_cast<int>(f), bank.activation(),
                                                                                      bank.activation_params(), act);
      detail::cuda_check(cudaGetLastError(), where);
      detail::cublas_check(kc::tile_gemm<T>(m_blas->handle, static_cast<int>(d), static_cast<int>(f), p + 2 * tiles, p + 3 * tiles,
                                            reinterpret_cast<float* const*>(dev_ptrs + 5 * tiles), tiles), where);
    }
    if (T_tokens > 0) {
      detail::cuda_combine_kernel<<<kc::elementwise_blocks(T_tokens * d), 256, 0, m_stream>>>(
          out, slot_entry, dst_row, entries, T_tokens, static_cast<int>(K), static_cast<int>(d), y.data(), y.outerStride());
      detail::cuda_check(cudaGetLastError(), where);
    }
    // The pointer lists stay in m_ptrs until the next dispatch (the copy is stream-ordered).
    detail::cuda_check(cudaStreamSynchronize(m_stream), where);
  }

  cudaStream_t m_stream = nullptr;
  std::shared_ptr<detail::cublas_handle> m_blas;
  mutable std::vector<const void*> m_ptrs;
};

static_assert(execution_device<cuda>);
static_assert(device_for<cuda, cuda_swiglu_experts<float>>);
static_assert(device_for<cuda, cuda_swiglu_experts<__nv_bfloat16>>);
static_assert(device_for<cuda, cuda_swiglu_experts<__half>>);
static_assert(accessible_from<cuda, cuda_memory>);
static_assert(!accessible_from<cuda, host_memory>);

}  // namespace device
}  // namespace moe
