// SPDX-License-Identifier: Apache-2.0
// The bf16 moe::device::cuda layer at the OLMoE shape (d 2048, f 1024, 64 SwiGLU experts, top-8
// softmax, T = 4096) against cuBLAS dense GEMMs of the same FLOPs in the same run, with the
// layer's NMSE against the CPU layer (moe::device::cpu, fp32). Prints a Markdown section.
// Exits with 77 without a GPU. Run by bench/gpu/run.sh.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include <moe/device/cuda/device.cuh>

#include "cpu_reference.hpp"

namespace {
namespace kc = moe::kernels::cuda;
using clk = std::chrono::steady_clock;

template <class F>
double median_ms(int reps, F&& f) {
  std::vector<double> t;
  f();  // warm-up
  cudaDeviceSynchronize();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = clk::now();
    f();
    cudaDeviceSynchronize();
    t.push_back(std::chrono::duration<double, std::milli>(clk::now() - t0).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  if (moe::device::cuda::device_count() == 0) {
    std::printf("moe_cuda_bench: no CUDA GPU visible: skipped (exit 77)\n");
    return 77;
  }
  const int E = 64, d = 2048, f = 1024, K = 8;
  const std::int64_t T = argc > 1 ? std::atoll(argv[1]) : 4096;
  const int reps = 20;
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);

  std::mt19937_64 g(11);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> gate(static_cast<std::size_t>(E) * f * d), up(gate.size()), down(static_cast<std::size_t>(E) * d * f),
      x(static_cast<std::size_t>(T * d)), z(static_cast<std::size_t>(T * E));
  for (auto& v : gate) v = n01(g) / std::sqrt(static_cast<float>(d));
  for (auto& v : up) v = n01(g) / std::sqrt(static_cast<float>(d));
  for (auto& v : down) v = n01(g) / std::sqrt(static_cast<float>(f));
  for (auto& v : x) v = n01(g);
  for (auto& v : z) v = n01(g);

  // CPU: routing (case 0: top_k softmax E64 k8, OLMoE) and the fp32 layer.
  std::vector<std::int32_t> ref_e(static_cast<std::size_t>(T * K));
  std::vector<float> ref_w(ref_e.size()), y_ref(x.size());
  const auto c0 = clk::now();
  moe_cuda_test::cpu_route_logits(0, z.data(), T, ref_e.data(), ref_w.data());
  moe_cuda_test::cpu_layer(x.data(), T, d, E, f, gate.data(), up.data(), down.data(), ref_e.data(), ref_w.data(), K, y_ref.data());
  const double cpu_ms = std::chrono::duration<double, std::milli>(clk::now() - c0).count();

  const moe::device::cuda dev;
  const moe::cuda_swiglu_experts<__nv_bfloat16> bank(gate.data(), up.data(), down.data(), E, d, f);
  moe::cuda_buffer<float> dx, dz, dz_work(T * E), dy(T * d);
  dx.upload(x.data(), T * d);
  dz.upload(z.data(), T * E);
  moe::cuda_plan plan;
  moe::cuda_workspace ws;
  const kc::row_policy pol = moe_cuda_test::router_policy(0);
  const auto route = [&] {
    cudaMemcpyAsync(dz_work.data(), dz.data(), sizeof(float) * static_cast<std::size_t>(T * E), cudaMemcpyDeviceToDevice);
    dev.route_logits(pol, {dz_work.data(), T, E, E}, E, plan);
  };
  const auto dispatch = [&] { dev.dispatch(plan, {dx.data(), T, d, d}, bank, {dy.data(), T, d, d}, ws); };
  const double route_ms = median_ms(reps, route);
  const double dispatch_ms = median_ms(reps, dispatch);
  route();
  dispatch();
  cudaDeviceSynchronize();

  std::vector<std::int32_t> e(ref_e.size());
  plan.expert_ids.download(e.data(), T * K);
  std::int64_t bad_ids = 0;
  for (std::size_t i = 0; i < e.size(); ++i) bad_ids += e[i] != ref_e[i];
  std::vector<float> y(x.size());
  dy.download(y.data(), T * d);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    num += (static_cast<double>(y[i]) - y_ref[i]) * (static_cast<double>(y[i]) - y_ref[i]);
    den += static_cast<double>(y_ref[i]) * y_ref[i];
  }
  const double nmse = num / den;

  // Dense cuBLAS baseline of the same FLOPs: [T·k × d] · [2f × d]ᵀ and [T·k × f] · [d × f]ᵀ.
  const std::int64_t M = T * K;
  moe::cuda_buffer<__nv_bfloat16> a(M * std::max(d, f)), w1(2 * f * static_cast<std::int64_t>(d)), w2(static_cast<std::int64_t>(d) * f);
  moe::cuda_buffer<float> c1(M * 2 * f), c2(M * d);
  cudaMemset(a.data(), 0, sizeof(__nv_bfloat16) * static_cast<std::size_t>(a.size()));
  cudaMemset(w1.data(), 0, sizeof(__nv_bfloat16) * static_cast<std::size_t>(w1.size()));
  cudaMemset(w2.data(), 0, sizeof(__nv_bfloat16) * static_cast<std::size_t>(w2.size()));
  cublasHandle_t h;
  cublasCreate(&h);
  const double dense_ms = median_ms(reps, [&] {
    kc::dense_gemm<__nv_bfloat16>(h, static_cast<int>(M), 2 * f, d, w1.data(), a.data(), c1.data());
    kc::dense_gemm<__nv_bfloat16>(h, static_cast<int>(M), d, f, w2.data(), a.data(), c2.data());
  });
  cublasDestroy(h);
  const double flops = 2.0 * static_cast<double>(M) * (2.0 * f * d + static_cast<double>(d) * f);

  std::printf("## bf16 layer at the OLMoE shape on %s\n\n", prop.name);
  std::printf("T = %lld, d = %d, f = %d, E = %d, k = %d; weights bf16, accumulation fp32; median of %d runs.\n\n",
              static_cast<long long>(T), d, f, E, K, reps);
  std::printf("| step | time (ms) | TFLOP/s |\n|---|---|---|\n");
  std::printf("| routing kernel + counting sort (from logits) | %.3f | |\n", route_ms);
  std::printf("| dispatch (gather, 2 batched GEMMs, SwiGLU, combine) | %.3f | %.1f |\n", dispatch_ms,
              flops / (dispatch_ms * 1e9));
  std::printf("| cuBLAS dense GEMMs, same FLOPs | %.3f | %.1f |\n", dense_ms, flops / (dense_ms * 1e9));
  std::printf("| layer / dense | %.2f | |\n\n", (route_ms + dispatch_ms) / dense_ms);
  std::printf("Expert ids equal to the CPU router's: %s (%lld differ). NMSE against the fp32 CPU layer "
              "(moe::device::cpu, %.0f ms): %.3g (%s, limit 5e-4).\n",
              bad_ids == 0 ? "yes" : "**no**", static_cast<long long>(bad_ids), cpu_ms, nmse,
              nmse <= 5e-4 ? "pass" : "**FAIL**");
  return bad_ids == 0 && nmse <= 5e-4 ? 0 : 1;
}
