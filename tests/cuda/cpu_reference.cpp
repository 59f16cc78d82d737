// SPDX-License-Identifier: Apache-2.0
#include "cpu_reference.hpp"

#include <memory>
#include <vector>

#include <moe/device/cpu.hpp>
#include <moe/device/cuda/memory.cuh>  // host code only: the memory space and buffers
#include <moe/device/serial.hpp>
#include <moe/device/cuda/host_emulation.hpp>
#include <moe/experts/swiglu.hpp>
#include <moe/routing/routers/group_limited.hpp>
#include <moe/routing/routers/top_k.hpp>
#include <moe/routing/wrappers/null_experts.hpp>

// Host devices cannot read device memory: the layer refuses such views at compile time.
static_assert(!moe::accessible_from<moe::device::cpu, moe::cuda_memory>);
static_assert(!moe::accessible_from<moe::device::serial, moe::memory_space_of_t<moe::cuda_matrix_view<float>>>);
static_assert(!moe::accessible_from<moe::device::cpu, moe::memory_space_of_t<moe::cuda_buffer<float>>>);

namespace moe_cuda_test {
namespace {

struct any_router {
  router_case info;
  virtual ~any_router() = default;
  virtual moe::kernels::cuda::row_policy policy() const = 0;
  virtual void route_logits(moe::const_matrix_map<float> z, moe::routing_plan& plan, moe::workspace& ws) const = 0;
};

template <class R>
struct router_of : any_router {
  R r;
  router_of(router_case i, R router) : r(std::move(router)) { info = std::move(i); }
  moe::kernels::cuda::row_policy policy() const override { return moe::kernels::cuda::policy_of(r); }
  void route_logits(moe::const_matrix_map<float> z, moe::routing_plan& plan, moe::workspace& ws) const override {
    r.route_logits(z, plan, ws);
  }
};

moe::row_matrix<float> weight(moe::index rows) {
  moe::row_matrix<float> w(rows, 4);
  w.setConstant(0.5f);
  return w;
}
std::vector<float> bias(int n) {
  std::vector<float> b(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) b[static_cast<std::size_t>(i)] = static_cast<float>((i * 7) % 5 - 2) * 0.125f;
  return b;
}

const std::vector<std::unique_ptr<any_router>>& routers() {
  static const auto all = [] {
    using namespace moe;
    constexpr auto to_inf = nan_policy::to_neg_inf;
    std::vector<std::unique_ptr<any_router>> v;
    v.push_back(std::make_unique<router_of<top_k<softmax_gate>>>(
        router_case{"top_k softmax E64 k8 (OLMoE)", 64, 64, 8}, top_k<softmax_gate>(weight(64), {.k = 8, .nan = to_inf})));
    v.push_back(std::make_unique<router_of<top_k<sigmoid_gate>>>(
        router_case{"top_k sigmoid bias E256 k8 renorm", 256, 256, 8},
        top_k<sigmoid_gate>(weight(256), {.k = 8, .renormalize = true, .route_scale = 2.5f, .selection_bias = bias(256), .nan = to_inf})));
    v.push_back(std::make_unique<router_of<group_limited<sigmoid_gate>>>(
        router_case{"group_limited DeepSeek-V3 E256 k8 8g top4", 256, 256, 8},
        group_limited<sigmoid_gate>(weight(256), {.k = 8, .n_groups = 8, .topk_groups = 4, .route_scale = 2.5f,
                                                  .selection_bias = bias(256), .nan = to_inf})));
    v.push_back(std::make_unique<router_of<null_experts<top_k<softmax_gate>>>>(
        router_case{"null_experts E64 m8 k8 renorm", 72, 64, 8},
        null_experts<top_k<softmax_gate>>(weight(64), weight(8), {.k = 8, .renormalize = true, .nan = to_inf})));
    v.push_back(std::make_unique<router_of<top_k<softmax_gate>>>(
        router_case{"top_k softmax E1024 k32 renorm T0.7", 1024, 1024, 32},
        top_k<softmax_gate>(weight(1024), {.k = 32, .renormalize = true, .temperature = 0.7f, .nan = to_inf})));
    return v;
  }();
  return all;
}

}  // namespace

int router_cases() { return static_cast<int>(routers().size()); }
router_case router_case_at(int i) { return routers()[static_cast<std::size_t>(i)]->info; }
moe::kernels::cuda::row_policy router_policy(int i) { return routers()[static_cast<std::size_t>(i)]->policy(); }

void cpu_route_logits(int i, const float* z, std::int64_t T, std::int32_t* experts, float* weights) {
  const auto& r = *routers()[static_cast<std::size_t>(i)];
  moe::workspace ws;
  moe::routing_plan plan;
  r.route_logits(moe::map(z, T, r.info.columns), plan, ws);
  const int K = r.info.k;
  for (std::int64_t t = 0; t < T; ++t) {
    for (int s = 0; s < K; ++s) {
      experts[t * K + s] = plan.expert(t, s);
      weights[t * K + s] = plan.weight(t, s);
    }
  }
}

void cpu_layer(const float* x, std::int64_t T, int d, int E, int f, const float* gate, const float* up, const float* down,
               const std::int32_t* experts, const float* weights, int K, float* y) {
  const moe::swiglu_experts<float> bank(moe::map(gate, std::int64_t{E} * f, d), moe::map(up, std::int64_t{E} * f, d),
                                        moe::map(down, std::int64_t{E} * d, f));
  moe::routing_plan plan;
  plan.reset(T, K, E);
  for (std::int64_t t = 0; t < T; ++t) {
    for (int s = 0; s < K; ++s) plan.set(t, s, experts[t * K + s], weights[t * K + s]);
  }
  plan.build_expert_major();
  moe::workspace ws;
  moe::device::cpu().dispatch(plan, moe::map(x, T, d), bank, moe::map(y, T, d), ws);
}

}  // namespace moe_cuda_test
