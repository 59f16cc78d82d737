// SPDX-License-Identifier: Apache-2.0
// Loading an OLMoE-shaped MoE layer (d 2048, f 1024, 64 experts: 1.61 GB of F32 expert tensors,
// Hugging Face naming, one safetensors file with its config.json) from a warm page cache:
//   load_checkpoint_layer   per iteration, on every thread of the process:
//     1. the read probe: map the checkpoint afresh and sum every byte of the expert tensors as
//        floats (the time to read those bytes);
//     2. the load: map it afresh, moe::io::load_experts<float> (packing straight from the mapped
//        tensors).
//     3. the load in place: map it afresh, moe::io::map_experts (nothing packed; the experts'
//        pages are faulted into the process, as a forward pass needs them), then the first and
//        the second forward pass of 64 tokens over that bank.
// Counters: read_seconds, load_seconds, load_over_read (the goal is <= 1.5), gbytes_per_second
// of the load, map_seconds and map_over_read (the load in place), first_pass_over_next (what the
// first pass after the load in place still pays), map_peak_over_bank, and peak_over_packed: the process's peak resident set during the load (VmHWM
// after resetting it through /proc/self/clear_refs) minus the resident set before it, over the
// packed bank's bytes (the goal is <= 1.1; file pages that the load has mapped count).
// The checkpoint is written once to the temporary directory ($TMPDIR) and removed at exit.
//   in_place_forward/T   the OLMoE layer (fp32, top-8) on T tokens, over the packed bank
//     (moe::swiglu_experts<float>) and over the same weights in place (moe::mapped_swiglu_experts
//     over the row-major arrays), alternately in each iteration. Counters: packed_tokens_per_second,
//     tokens_per_second (in place), in_place_over_packed (the speed ratio), and for the in-place
//     bank frac_bandwidth: bytes of the distinct experts the batch selects over the time, as a
//     fraction of the read-bandwidth probe.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <omp.h>

#include <xsimd/xsimd.hpp>

#include <moe/io/checkpoint.hpp>

#include "olmoe_fixture.hpp"
#include "probes.hpp"

namespace {

constexpr moe::index ld = 2048, lf = 1024, lE = 64;

struct checkpoint_file {
  std::filesystem::path dir;
  double expert_bytes = 0;
  checkpoint_file() {
    dir = std::filesystem::temp_directory_path() / "moe_load_bench";
    std::filesystem::create_directories(dir);
    std::ofstream(dir / "config.json") << R"({"model_type": "olmoe", "hidden_size": 2048, "intermediate_size": 1024,
      "num_experts": 64, "num_experts_per_tok": 8, "num_hidden_layers": 1, "norm_topk_prob": false})";
    moe::io::safetensors_writer w;
    std::vector<float> m(static_cast<std::size_t>(ld * lf));
    std::uint64_t s = 1;
    const auto fill = [&] {
      for (auto& v : m) {
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        v = static_cast<float>(static_cast<std::int32_t>(s >> 32)) * 0x1p-36f;
      }
    };
    fill();
    w.add("model.layers.0.mlp.gate.weight", "F32", {lE, ld}, std::as_bytes(std::span(m.data(), static_cast<std::size_t>(lE * ld))));
    const auto names = moe::io::hf_tensor_names("olmoe", 0);
    for (moe::index e = 0; e < lE; ++e) {
      const auto name = [&](const std::string& p) {
        std::string n = p;
        n.replace(n.find("{e}"), 3, std::to_string(e));
        return n;
      };
      fill();
      w.add(name(names.gate), "F32", {lf, ld}, std::as_bytes(std::span(m)));
      fill();
      w.add(name(names.up), "F32", {lf, ld}, std::as_bytes(std::span(m)));
      fill();
      w.add(name(names.down), "F32", {ld, lf}, std::as_bytes(std::span(m)));
    }
    w.write((dir / "model.safetensors").string());
    expert_bytes = 3.0 * ld * lf * lE * sizeof(float);
  }
  ~checkpoint_file() { std::filesystem::remove_all(dir); }
  static checkpoint_file& get() {
    static checkpoint_file instance;
    return instance;
  }
};

/// Seconds to map the checkpoint and sum every float of its expert tensors on all threads.
double read_seconds(const checkpoint_file& cf, const moe::model_config& cfg) {
  using batch = xsimd::batch<float>;
  const auto t0 = std::chrono::steady_clock::now();
  const moe::io::checkpoint ckpt(cf.dir.string());
  const auto names = moe::io::tensor_names(ckpt, cfg, 0);
  std::vector<std::span<const std::byte>> spans;
  for (moe::index e = 0; e < cfg.experts; ++e) {
    for (const auto* p : {&names.gate, &names.up, &names.down}) {
      std::string n = *p;
      n.replace(n.find("{e}"), 3, std::to_string(e));
      spans.push_back(ckpt.tensor(n).bytes);
    }
  }
  float total = 0;
  const auto count = static_cast<long>(spans.size());
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (long i = 0; i < count; ++i) {
    const auto* a = reinterpret_cast<const float*>(spans[static_cast<std::size_t>(i)].data());
    const std::size_t n = spans[static_cast<std::size_t>(i)].size() / sizeof(float), step = 8 * batch::size;
    batch acc[8];
    for (auto& v : acc) v = batch(0.0f);
    std::size_t j = 0;
    for (; j + step <= n; j += step) {
#pragma GCC unroll 8
      for (std::size_t q = 0; q < 8; ++q) acc[q] += batch::load_unaligned(a + j + q * batch::size);
    }
    for (int q = 1; q < 8; ++q) acc[0] += acc[q];
    float r = xsimd::hadd(acc[0]);
    for (; j < n; ++j) r += a[j];
    total += r;
  }
  benchmark::DoNotOptimize(total);
  return moe_bench::seconds_since(t0);
}

/// A field of /proc/self/status in bytes (its kB value), or 0 where there is none.
double status_bytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::string key = std::string(field) + ":";
  while (std::getline(in, line)) {
    if (line.rfind(key, 0) == 0) return std::stod(line.substr(key.size())) * 1024.0;
  }
  return 0;
}

void load_checkpoint_layer(benchmark::State& state) {
  auto& cf = checkpoint_file::get();
  const auto cfg = moe::model_config::from_file((cf.dir / "config.json").string());
  read_seconds(cf, cfg);  // warm the page cache
  double read = 0, load = 0, peak = 0, packed = 0, map = 0, map_peak = 0, first = 0, second = 0;
  for (auto _ : state) {
    {
      { std::ofstream("/proc/self/clear_refs") << "5"; }
      const double rss0 = status_bytes("VmRSS");
      const auto t0 = std::chrono::steady_clock::now();
      const moe::io::checkpoint ckpt(cf.dir.string());
      auto bank = moe::io::map_experts(ckpt, cfg, 0);
      map += moe_bench::seconds_since(t0);
      map_peak = std::max(map_peak, status_bytes("VmHWM") - rss0);
      // The first pass after the load against the next one: nothing is left to fault in.
      const auto router = moe::io::load_router(ckpt, cfg, 0);
      moe::layer<moe::top_k<>, moe::mapped_swiglu_experts, moe::device::cpu> layer(moe::top_k<>(router.weight, {.k = 8}),
                                                                                    std::move(bank));
      const auto x = moe_bench::tokens(64);
      moe::row_matrix<float> y(64, ld);
      auto t1 = std::chrono::steady_clock::now();
      layer.forward(x, y);
      first += moe_bench::seconds_since(t1);
      t1 = std::chrono::steady_clock::now();
      layer.forward(x, y);
      second += moe_bench::seconds_since(t1);
      benchmark::DoNotOptimize(y.data());
    }
    const double r = read_seconds(cf, cfg);
    { std::ofstream("/proc/self/clear_refs") << "5"; }  // reset VmHWM to the current RSS
    const double rss0 = status_bytes("VmRSS");
    const auto t0 = std::chrono::steady_clock::now();
    double hwm = 0;
    {
      const moe::io::checkpoint ckpt(cf.dir.string());
      auto bank = moe::io::load_experts<float>(ckpt, cfg, 0);
      const double l = moe_bench::seconds_since(t0);
      state.SetIterationTime(l);
      hwm = status_bytes("VmHWM");
      load += l;
      packed = bank.bytes_per_expert() * static_cast<double>(lE);
      benchmark::DoNotOptimize(bank);
    }
    read += r;
    peak = std::max(peak, hwm - rss0);
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["read_seconds"] = read / n;
  state.counters["load_seconds"] = load / n;
  state.counters["load_over_read"] = load / read;
  state.counters["gbytes_per_second"] = cf.expert_bytes * n / load / 1e9;
  state.counters["expert_gbytes"] = cf.expert_bytes / 1e9;
  state.counters["peak_over_packed"] = peak / packed;
  state.counters["map_seconds"] = map / n;
  state.counters["map_over_read"] = map / read;
  state.counters["map_peak_over_bank"] = map_peak / packed;
  state.counters["first_pass_over_next"] = first / second;
  state.counters["threads"] = omp_get_max_threads();
}
BENCHMARK(load_checkpoint_layer)->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(3);

/// Experts of the plan with at least one token.
moe::index distinct_experts(const moe::routing_plan& plan) {
  moe::index n = 0;
  for (moe::index e = 0; e < plan.num_experts(); ++e) n += plan.load(e) > 0 ? 1 : 0;
  return n;
}

void in_place_forward(benchmark::State& state) {
  using namespace moe_bench;
  auto& fx = olmoe_fixture::get();
  using mapped_layer = moe::layer<moe::top_k<>, moe::mapped_swiglu_experts, moe::device::cpu>;
  const auto src = [](const std::vector<float>& w, moe::index r, moe::index c) {
    return moe::weight_source::stacked(moe::element_type::f32, w.data(), E, r, c);
  };
  static mapped_layer in_place(moe::top_k<>(fx.router(), {.k = k}),
                               moe::mapped_swiglu_experts(src(fx.gate, f, d), src(fx.up, f, d), src(fx.down, d, f)));
  const moe::index T = state.range(0);
  const auto x = tokens(T);
  moe::row_matrix<float> y(T, d), yp(T, d);
  in_place.forward(x, y);  // warm up both
  fx.layer.forward(x, yp);
  double packed = 0, mine = 0, bytes = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    fx.layer.forward(x, yp);
    packed += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    in_place.forward(x, y);
    const double s = seconds_since(t0);
    state.SetIterationTime(s);
    mine += s;
    bytes += static_cast<double>(distinct_experts(in_place.plan())) * in_place.experts().bytes_per_expert();
    benchmark::DoNotOptimize(y.data());
  }
  const auto n = static_cast<double>(state.iterations());
  state.counters["tokens_per_second"] = static_cast<double>(T) * n / mine;
  state.counters["packed_tokens_per_second"] = static_cast<double>(T) * n / packed;
  state.counters["in_place_over_packed"] = packed / mine;
  state.counters["frac_bandwidth"] = bytes / mine / 1e9 / read_bandwidth();
  state.counters["read_gbps"] = read_bandwidth();
  state.counters["threads"] = omp_get_max_threads();
}
BENCHMARK(in_place_forward)->Arg(1)->Arg(8)->Arg(32)->Arg(512)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace
