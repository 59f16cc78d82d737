// SPDX-License-Identifier: Apache-2.0
// Tests of moe::device::cuda on a GPU (include/moe/device/cuda/): the routing kernel's expert
// ids and weights equal the CPU routers' on 10^6 random rows (ties, ±inf, NaN rows), the GPU
// counting sort equals the stable sort by expert, the layer is within NMSE of the CPU layer
// (fp32, bf16, fp16), deterministic and batch invariant. Every CUDA header is compiled here.
//
// Without a GPU the program prints why and exits with 77, which ctest reports as skipped
// (SKIP_RETURN_CODE), never as passed. Usage: moe_cuda_tests [--rows N] [--summary FILE]
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <moe/device/cuda/device.cuh>
#include <moe/device/cuda/ffn.cuh>
#include <moe/device/cuda/memory.cuh>
#include <moe/device/cuda/routing.cuh>
#include <moe/device/cuda/routing_math.hpp>

#include "cpu_reference.hpp"

namespace {
namespace kc = moe::kernels::cuda;
using moe_test_clock = std::chrono::steady_clock;

// Host views cannot be read by the CUDA device, device views cannot be read by host devices.
static_assert(!moe::accessible_from<moe::device::cuda, moe::host_memory>);
static_assert(moe::accessible_from<moe::device::cuda, moe::memory_space_of_t<moe::cuda_matrix_view<float>>>);
static_assert(std::is_same_v<moe::memory_space_of_t<moe::cuda_buffer<float>>, moe::cuda_memory>);
static_assert(moe::device_for<moe::device::cuda, moe::cuda_swiglu_experts<__nv_bfloat16>>);
// (That host devices cannot read cuda_memory is asserted in cpu_reference.cpp, a host-compiler TU.)

constexpr int skip_code = 77;
std::FILE* g_summary = nullptr;
int g_failures = 0;

void report(bool ok, const std::string& name, const std::string& detail) {
  if (!ok) ++g_failures;
  std::printf("%s  %s  %s\n", ok ? "PASS" : "FAIL", name.c_str(), detail.c_str());
  if (g_summary) std::fprintf(g_summary, "| %s | %s | %s |\n", ok ? "pass" : "**FAIL**", name.c_str(), detail.c_str());
}

std::uint32_t bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Random logits: continuous, exact ties, -inf entries, all -inf rows, +inf entries, large
// magnitudes, rows with NaN entries.
std::vector<float> random_logits(std::mt19937_64& g, std::int64_t T, int C) {
  std::vector<float> z(static_cast<std::size_t>(T * C));
  std::uniform_real_distribution<float> u(-4.0f, 4.0f), big(-120.0f, 120.0f);
  std::uniform_int_distribution<int> kind(0, 8), small(-2, 2), coin(0, 9);
  const float inf = INFINITY;
  for (std::int64_t t = 0; t < T; ++t) {
    const int k = kind(g);
    for (int c = 0; c < C; ++c) {
      float v = u(g);
      if (k == 1) v = static_cast<float>(small(g)) * 0.5f;
      if (k == 2 && coin(g) < 3) v = -inf;
      if (k == 3) v = -inf;
      if (k == 4 && coin(g) == 0) v = inf;
      if (k == 5) v = big(g);
      if (k == 6) v = 0.25f;
      if (k == 7 && coin(g) == 0) v = NAN;
      z[static_cast<std::size_t>(t * C + c)] = v;
    }
  }
  return z;
}

void test_routing(std::int64_t rows) {
  std::mt19937_64 g(2024);
  const moe::device::cuda dev;
  for (int i = 0; i < moe_cuda_test::router_cases(); ++i) {
    const auto rc = moe_cuda_test::router_case_at(i);
    const std::int64_t T = rc.columns > 256 ? rows / 10 : rows;
    const auto z = random_logits(g, T, rc.columns);
    std::vector<std::int32_t> ref_e(static_cast<std::size_t>(T * rc.k));
    std::vector<float> ref_w(ref_e.size());
    moe_cuda_test::cpu_route_logits(i, z.data(), T, ref_e.data(), ref_w.data());

    kc::row_policy pol = moe_cuda_test::router_policy(i);
    moe::cuda_buffer<float> bias;
    if (pol.bias) {
      bias.upload(pol.bias, pol.columns);
      pol.bias = bias.data();
    }
    moe::cuda_buffer<float> dz;
    dz.upload(z.data(), T * rc.columns);
    moe::cuda_plan plan;
    cudaDeviceSynchronize();
    const auto t0 = moe_test_clock::now();
    dev.route_logits(pol, {dz.data(), T, rc.columns, rc.columns}, rc.experts, plan);
    cudaDeviceSynchronize();
    const double ms = std::chrono::duration<double, std::milli>(moe_test_clock::now() - t0).count();
    std::vector<std::int32_t> e(ref_e.size());
    std::vector<float> w(ref_w.size());
    plan.expert_ids.download(e.data(), T * rc.k);
    plan.weights.download(w.data(), T * rc.k);
    std::int64_t bad_ids = 0, bad_w = 0;
    for (std::size_t j = 0; j < e.size(); ++j) {
      bad_ids += e[j] != ref_e[j];
      bad_w += bits(w[j]) != bits(ref_w[j]);
    }
    report(bad_ids == 0 && bad_w == 0, "routing ids and weights = CPU: " + rc.name,
           std::to_string(T) + " rows, " + std::to_string(bad_ids) + " ids and " + std::to_string(bad_w) +
               " weights differ; route + sort " + std::to_string(ms) + " ms");

    // The GPU sort against the stable sort of the same slots (routing_math.hpp on the host).
    std::vector<std::int64_t> offsets(static_cast<std::size_t>(rc.experts + 1));
    plan.offsets.download(offsets.data(), rc.experts + 1);
    const std::int64_t A = offsets.back();
    std::vector<kc::sort_entry> entries(static_cast<std::size_t>(std::max<std::int64_t>(A, 1)));
    if (A > 0) plan.entries.download(entries.data(), A);
    std::vector<std::int64_t> ref_off(offsets.size(), 0);
    for (std::size_t j = 0; j < ref_e.size(); ++j) {
      if (ref_e[j] >= 0 && ref_w[j] != 0.0f) ++ref_off[static_cast<std::size_t>(ref_e[j]) + 1];
    }
    for (int x = 0; x < rc.experts; ++x) ref_off[static_cast<std::size_t>(x + 1)] += ref_off[static_cast<std::size_t>(x)];
    std::vector<std::int64_t> cursor(ref_off.begin(), ref_off.end() - 1);
    std::int64_t bad_sort = ref_off != offsets ? 1 : 0;
    for (std::size_t j = 0; j < ref_e.size() && bad_sort == 0; ++j) {
      if (ref_e[j] < 0 || ref_w[j] == 0.0f) continue;
      const auto& en = entries[static_cast<std::size_t>(cursor[static_cast<std::size_t>(ref_e[j])]++)];
      bad_sort += en.token != static_cast<std::int32_t>(j / rc.k) || en.slot != static_cast<std::int32_t>(j % rc.k);
    }
    report(bad_sort == 0, "counting sort = stable sort by expert: " + rc.name, std::to_string(A) + " entries");
  }
}

template <class T>
void test_layer(const char* type, double nmse_limit) {
  const int E = 64, d = 256, f = 128, K = 8;
  const std::int64_t Tn = 2048;
  std::mt19937_64 g(7);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> gate(static_cast<std::size_t>(E) * f * d), up(gate.size()), down(static_cast<std::size_t>(E) * d * f),
      x(static_cast<std::size_t>(Tn * d));
  for (auto& v : gate) v = n01(g) / std::sqrt(static_cast<float>(d));
  for (auto& v : up) v = n01(g) / std::sqrt(static_cast<float>(d));
  for (auto& v : down) v = n01(g) / std::sqrt(static_cast<float>(f));
  for (auto& v : x) v = n01(g);
  // Routing: case 0 (top_k softmax E64 k8) on random logits without NaN.
  std::vector<float> z(static_cast<std::size_t>(Tn * E));
  for (auto& v : z) v = n01(g);
  std::vector<std::int32_t> ref_e(static_cast<std::size_t>(Tn * K));
  std::vector<float> ref_w(ref_e.size()), y_ref(x.size());
  moe_cuda_test::cpu_route_logits(0, z.data(), Tn, ref_e.data(), ref_w.data());
  moe_cuda_test::cpu_layer(x.data(), Tn, d, E, f, gate.data(), up.data(), down.data(), ref_e.data(), ref_w.data(), K, y_ref.data());

  const moe::device::cuda dev;
  const moe::cuda_swiglu_experts<T> bank(gate.data(), up.data(), down.data(), E, d, f);
  moe::cuda_buffer<float> dx, dz, dy(Tn * d), dy2(Tn * d);
  dx.upload(x.data(), Tn * d);
  dz.upload(z.data(), Tn * E);
  moe::cuda_plan plan;
  dev.route_logits(moe_cuda_test::router_policy(0), {dz.data(), Tn, E, E}, E, plan);
  moe::cuda_workspace ws;
  dev.dispatch(plan, {dx.data(), Tn, d, d}, bank, {dy.data(), Tn, d, d}, ws);
  std::vector<float> y(x.size()), y2(x.size());
  dy.download(y.data(), Tn * d);
  double num = 0, den = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    num += (static_cast<double>(y[i]) - y_ref[i]) * (static_cast<double>(y[i]) - y_ref[i]);
    den += static_cast<double>(y_ref[i]) * y_ref[i];
  }
  const double nmse = den > 0 ? num / den : num;
  report(nmse <= nmse_limit, std::string("layer NMSE vs CPU layer, ") + type,
         "T 2048, E 64, k 8, d 256, f 128: NMSE " + std::to_string(nmse) + " (limit " + std::to_string(nmse_limit) + ")");
  // moe::device_for's run() from the host plan (the CPU router's slots, its expert-major view
  // uploaded): the same entries, so the same bits as dispatch() from the GPU plan.
  {
    moe::routing_plan hp;
    hp.reset(Tn, K, E);
    for (std::int64_t t = 0; t < Tn; ++t) {
      for (int s = 0; s < K; ++s) hp.set(t, s, ref_e[static_cast<std::size_t>(t * K + s)], ref_w[static_cast<std::size_t>(t * K + s)]);
    }
    hp.build_expert_major();
    const moe::layer_pass<moe::cuda_swiglu_experts<T>> pass{
        &hp, moe::const_matrix_map<float>(dx.data(), Tn, d, Eigen::OuterStride<>(d)), &bank};
    dev.run(pass, moe::matrix_map<float>(dy2.data(), Tn, d, Eigen::OuterStride<>(d)), ws);
    dy2.download(y2.data(), Tn * d);
    report(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)) == 0, std::string("run() from a host plan = dispatch(), ") + type,
           "same bits");
  }
  // Deterministic: the same call again gives the same bits.
  dev.dispatch(plan, {dx.data(), Tn, d, d}, bank, {dy2.data(), Tn, d, d}, ws);
  dy2.download(y2.data(), Tn * d);
  report(std::memcmp(y.data(), y2.data(), y.size() * sizeof(float)) == 0, std::string("layer deterministic, ") + type,
         "two dispatches, same bits");
  // Batch invariant: the first 100 tokens alone give the same bits as inside the batch.
  const std::int64_t Ts = 100;
  moe::cuda_buffer<float> dzs, dys(Ts * d);
  dzs.upload(z.data(), Ts * E);
  moe::cuda_plan ps;
  dev.route_logits(moe_cuda_test::router_policy(0), {dzs.data(), Ts, E, E}, E, ps);
  dev.dispatch(ps, {dx.data(), Ts, d, d}, bank, {dys.data(), Ts, d, d}, ws);
  std::vector<float> ys(static_cast<std::size_t>(Ts * d));
  dys.download(ys.data(), Ts * d);
  report(std::memcmp(ys.data(), y.data(), ys.size() * sizeof(float)) == 0, std::string("layer batch invariant, ") + type,
         "100 tokens alone = the same tokens in a batch of 2048");
}

}  // namespace

int main(int argc, char** argv) {
  std::int64_t rows = 1000000;
  const char* summary = nullptr;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rows") == 0) rows = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--summary") == 0) summary = argv[i + 1];
  }
  if (moe::device::cuda::device_count() == 0) {
    std::printf("moe_cuda_tests: no CUDA GPU visible: skipped (exit %d)\n", skip_code);
    return skip_code;
  }
  if (summary) g_summary = std::fopen(summary, "a");
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("moe_cuda_tests on %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
  try {
    test_routing(rows);
    test_layer<float>("fp32", 1e-6);
    test_layer<__nv_bfloat16>("bf16", 5e-4);
    test_layer<__half>("fp16", 1e-4);
  } catch (const std::exception& e) {
    report(false, "exception", e.what());
  }
  if (g_summary) std::fclose(g_summary);
  std::printf("%d failure(s)\n", g_failures);
  return g_failures == 0 ? 0 : 1;
}
