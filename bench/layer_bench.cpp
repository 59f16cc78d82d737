// SPDX-License-Identifier: Apache-2.0
// Layer forward at the OLMoE shape (d = 2048, f = 1024, E = 64, k = 8), against baselines and
// machine probes measured in the same binary (bench/probes.hpp).
//   layer_forward[_bf16]/T        moe::layer<top_k<softmax>, swiglu_experts<Scalar>, device::cpu>
//   layer_bf16_kernel/T/kernel/prefetch  bf16 with a forced micro-kernel and prefetch distance
//   layer_threads/n               fp32, T = 512, on n threads (1 → 2 thread scaling)
//   layer_nonfinite_check/T       the entry check of non-finite x against none (A/B, same loop)
//   layer_naive/T                 per token, per slot: three Eigen matrix-vector products
//   layer_eigen_gemm/T            per expert: gather rows -> Eigen GEMMs -> weighted scatter-add
//   dense_gemm/T                  an Eigen dense FFN of the same FLOPs as a T-token forward
//   probe_fma, probe_bf16_dot, probe_amx, probe_read_bandwidth
// Counters of layer_forward: tokens_per_second; gflops (active FLOPs 6·T·k·d·f); frac_peak_flops
// (vs probe_fma; for bf16 weights vs the unit that runs them: probe_amx, probe_bf16_dot or
// probe_fma); gbytes_per_second (weight
// bytes of the distinct experts the batch selects, each read once per call) and frac_bandwidth
// (vs the read-bandwidth probe measured right before and after the timed loop, reported as
// probe_gbytes_per_second); ratio_to_dense (dense_gemm time / layer time). Batches of T <= 32
// rotate through 64 different token batches so that the experts they select are not cache-hot.
#include <benchmark/benchmark.h>

#include <chrono>
#include <vector>

#include "olmoe_fixture.hpp"
#include "probes.hpp"

namespace {

using namespace moe_bench;

void set_counters(benchmark::State& state, moe::index T) {
  state.counters["tokens_per_second"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["gflops"] = benchmark::Counter(layer_flops(T) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

// Distinct experts selected by a plan.
moe::index distinct_experts(const moe::routing_plan& plan) {
  moe::index n = 0;
  for (moe::index e = 0; e < plan.num_experts(); ++e) n += plan.load(e) > 0;
  return n;
}

template <class Scalar>
void forward_benchmark(benchmark::State& state, olmoe_layer<Scalar>& layer) {
  const moe::index T = state.range(0);
  const moe::index pool = T <= 32 ? 64 : 1;
  const auto x = tokens(T * pool, 7);
  moe::row_matrix<float> y(T, d);
  auto batch = [&](moe::index i) { return x.middleRows((i % pool) * T, T); };
  const double peak = std::is_same_v<Scalar, moe::bf16> ? bf16_peak() : fma_peak();
  const double dense = dense_seconds(T);
  layer.forward(batch(0), y);
  // The bandwidth this call is compared with: measured right before and right after the timed
  // loop (the host's memory bandwidth drifts with its load), the mean of the two.
  const double bandwidth_before = read_bandwidth_now();
  double seconds = 0, bytes = 0;
  moe::index it = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    layer.forward(batch(it++), y);
    seconds += seconds_since(t0);
    benchmark::DoNotOptimize(y.data());
    bytes += static_cast<double>(distinct_experts(layer.plan())) * layer.experts().bytes_per_expert();
  }
  const double bandwidth = (bandwidth_before + read_bandwidth_now()) / 2;
  set_counters(state, T);
  const double per_call = seconds / static_cast<double>(state.iterations());
  state.counters["frac_peak_flops"] = layer_flops(T) / per_call / 1e9 / peak;
  state.counters["gbytes_per_second"] = bytes / seconds / 1e9;
  state.counters["frac_bandwidth"] = bytes / seconds / 1e9 / bandwidth;
  state.counters["probe_gbytes_per_second"] = bandwidth;
  state.counters["ratio_to_dense"] = dense / per_call;
}

void layer_forward(benchmark::State& state) { forward_benchmark(state, olmoe_fixture::get().layer_of<float>()); }
void layer_forward_bf16(benchmark::State& state) {
  forward_benchmark(state, olmoe_fixture::get().layer_of<moe::bf16>());
}

// bf16 weights with a given micro-kernel (moe::kernels::bf16_kernel: 1 AMX, 2 vdpbf16ps, 3 widen
// to fp32) and weight-prefetch distance in bytes: what the automatic choice is measured against.
void layer_bf16_kernel(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  moe::swiglu_experts<moe::bf16> experts(fx.gate.data(), fx.up.data(), fx.down.data(), {E, d, f});
  auto tuning = moe::kernels::default_gemm_tuning;
  tuning.bf16 = static_cast<moe::kernels::bf16_kernel>(state.range(1));
  tuning.prefetch_bytes = state.range(2);
  experts.set_tuning(tuning);
  olmoe_layer<moe::bf16> layer(moe::top_k<>(moe::map(fx.router_w.data(), E, d), {.k = k}), std::move(experts));
  forward_benchmark(state, layer);
}

void layer_threads(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = 512;
  const auto x = tokens(T, 7);
  moe::row_matrix<float> y(T, d);
  olmoe_layer<float> layer(moe::top_k<>(moe::map(fx.router_w.data(), E, d), {.k = k}),
                           moe::swiglu_experts<float>(fx.gate.data(), fx.up.data(), fx.down.data(), {E, d, f}),
                           moe::device::cpu(static_cast<int>(state.range(0))));
  layer.forward(x, y);
  for (auto _ : state) {
    layer.forward(x, y);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, T);
}

// The entry check of non-finite token states (moe::nonfinite_policy::error, the default) against
// no check (propagate), A/B in one loop on the same layer and batch: check_share is the check's
// share of the checked forward, check_ns its cost per call.
void layer_nonfinite_check(benchmark::State& state) {
  auto& layer = olmoe_fixture::get().layer;
  const moe::index T = state.range(0);
  const moe::index pool = T <= 32 ? 64 : 1;
  const auto x = tokens(T * pool, 7);
  moe::row_matrix<float> y(T, d);
  auto batch = [&](moe::index i) { return x.middleRows((i % pool) * T, T); };
  layer.forward(batch(0), y);
  double checked = 0, unchecked = 0;
  moe::index it = 0;
  for (auto _ : state) {
    layer.set_nonfinite(moe::nonfinite_policy::error);
    auto t0 = std::chrono::steady_clock::now();
    layer.forward(batch(it), y);
    checked += seconds_since(t0);
    layer.set_nonfinite(moe::nonfinite_policy::propagate);
    t0 = std::chrono::steady_clock::now();
    layer.forward(batch(it++), y);
    unchecked += seconds_since(t0);
    benchmark::DoNotOptimize(y.data());
  }
  layer.set_nonfinite(moe::nonfinite_policy::error);
  const double n = static_cast<double>(state.iterations());
  // The check alone, timed on the same rows (it is one pass over x).
  const auto xs = x.middleRows(0, T);
  const auto t0 = std::chrono::steady_clock::now();
  for (int r = 0; r < 1000; ++r) moe::detail::check_finite_rows("bench", "x", moe::view(xs));
  const double check = seconds_since(t0) / 1000;
  state.counters["check_ns"] = check * 1e9;
  state.counters["check_share"] = check / (checked / n);
  state.counters["checked_over_unchecked"] = checked / unchecked;
  set_counters(state, T);
}

// Per token, per slot: y_t += w · W_down (silu(W_gate x_t) ⊙ W_up x_t), Eigen GEMVs.
void layer_naive(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d);
  Eigen::VectorXf g(f), u(f), h(f), out(d);
  for (auto _ : state) {
    const auto& plan = fx.layer.route(x);
    y.setZero();
    for (moe::index t = 0; t < T; ++t) {
      for (moe::index s = 0; s < plan.max_slots(); ++s) {
        const auto e = plan.expert(t, s);
        if (e == moe::no_expert) continue;
        g.noalias() = fx.gate_of(e) * x.row(t).transpose();
        u.noalias() = fx.up_of(e) * x.row(t).transpose();
        h = g.array() / (1.0f + (-g.array()).exp()) * u.array();
        out.noalias() = fx.down_of(e) * h;
        y.row(t) += plan.weight(t, s) * out.transpose();
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, T);
}

// Per expert: gather its rows, three Eigen GEMMs, weighted scatter-add.
void layer_eigen_gemm(benchmark::State& state) {
  auto& fx = olmoe_fixture::get();
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d);
  for (auto _ : state) {
    const auto& plan = fx.layer.route(x);
    y.setZero();
    for (moe::index e = 0; e < E; ++e) {
      const auto rows = plan.entries(e);
      const auto n = static_cast<moe::index>(rows.size());
      if (n == 0) continue;
      moe::row_matrix<float> xe(n, d);
      for (moe::index i = 0; i < n; ++i) xe.row(i) = x.row(rows[static_cast<std::size_t>(i)].token);
      moe::row_matrix<float> g = xe * fx.gate_of(e).transpose();
      moe::row_matrix<float> u = xe * fx.up_of(e).transpose();
      moe::row_matrix<float> h = (g.array() / (1.0f + (-g.array()).exp()) * u.array()).matrix();
      moe::row_matrix<float> out = h * fx.down_of(e).transpose();
      for (moe::index i = 0; i < n; ++i) {
        const auto& entry = rows[static_cast<std::size_t>(i)];
        y.row(entry.token) += plan.weight(entry.token, entry.slot) * out.row(i);
      }
    }
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, T);
}

void dense_gemm(benchmark::State& state) {
  const moe::index T = state.range(0);
  for (auto _ : state) state.SetIterationTime(dense_seconds(T));
  set_counters(state, T);
}

void probe_fma(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["gflops"] = fma_peak();
}
void probe_bf16_dot(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["gflops"] = bf16_dot_peak();
}
void probe_amx(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["gflops"] = amx_peak();
}
void probe_read_bandwidth(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1.0);
  state.counters["gbytes_per_second"] = read_bandwidth();
}

}  // namespace

BENCHMARK(probe_fma)->UseManualTime()->Iterations(1);
BENCHMARK(probe_bf16_dot)->UseManualTime()->Iterations(1);
BENCHMARK(probe_amx)->UseManualTime()->Iterations(1);
BENCHMARK(probe_read_bandwidth)->UseManualTime()->Iterations(1);
BENCHMARK(dense_gemm)->ArgName("T")->Arg(512)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(layer_forward)->ArgName("T")->Arg(1)->Arg(8)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_forward_bf16)->ArgName("T")->Arg(1)->Arg(8)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_bf16_kernel)
    ->ArgNames({"T", "kernel", "prefetch"})
    ->ArgsProduct({{1, 32}, {1, 2, 3}, {4096, 8192}})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(layer_nonfinite_check)->ArgName("T")->Arg(1)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_threads)->ArgName("threads")->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_eigen_gemm)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(layer_naive)->ArgName("T")->Arg(1)->Arg(32)->Arg(512)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(0.5);
