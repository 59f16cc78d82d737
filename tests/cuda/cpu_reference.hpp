// SPDX-License-Identifier: Apache-2.0
// The CPU side of the CUDA tests and benchmark: moe's host routers and the moe::device::cpu layer,
// compiled by the host compiler (xsimd stays out of nvcc) behind plain functions.
#pragma once

#include <cstdint>
#include <string>

#include <moe/device/cuda/routing_math.hpp>

namespace moe_cuda_test {

/// A router of the tests: its name, score columns C, true experts E and slots k.
struct router_case {
  std::string name;
  int columns;
  int experts;
  int k;
};

/// Number of router cases (top_k softmax, top_k sigmoid with bias, group_limited (DeepSeek-V3),
/// null_experts, and E = 1024, k = 32).
int router_cases();
router_case router_case_at(int i);
/// The kernel parameters of case i (its bias points to host memory owned by the case).
moe::kernels::cuda::row_policy router_policy(int i);
/// Routes raw logits `z [T × C]` with case i's CPU router (route_logits, NaN mapped to -inf):
/// `experts, weights [T × k]`.
void cpu_route_logits(int i, const float* z, std::int64_t T, std::int32_t* experts, float* weights);
/// `y [T × d] = Σ_slots weight · SwiGLU_e(x)` on moe::device::cpu for the given slots, with
/// fp32 experts in the checkpoint layout (gate, up [E·f × d], down [E·d × f]).
void cpu_layer(const float* x, std::int64_t T, int d, int E, int f, const float* gate, const float* up, const float* down,
               const std::int32_t* experts, const float* weights, int K, float* y);

}  // namespace moe_cuda_test
