// SPDX-License-Identifier: Apache-2.0
// Loads a GGUF checkpoint with moe::io::checkpoint, builds MoE layer N from it (router from
// `blk.N.ffn_gate_inp` with load_router, experts from `blk.N.ffn_{gate,up,down}_exps` in their own
// quantized format with load_quantized_experts, options from the model's metadata), routes a
// batch and prints what it did.
//
//   load_checkpoint [model.gguf [layer]]
//
// Without a file it first writes a small OLMoE-shaped checkpoint (d 512, f 256, 16 experts, top-4,
// Q4_K, seeded random weights) to the temporary directory and loads that.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include <moe/io/checkpoint.hpp>
#include <moe/moe.hpp>

namespace {
namespace fm = moe::formats;

std::vector<float> random_vector(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    std::uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    x = scale * (static_cast<float>((z ^ (z >> 31)) >> 40) * 0x1.0p-23f - 1.0f);
  }
  return v;
}

std::string write_demo_checkpoint() {
  const moe::index d = 512, f = 256, E = 16;
  moe::io::gguf_writer w;
  w.add_string("general.architecture", "olmoe");
  w.add_uint("olmoe.block_count", 1);
  w.add_uint("olmoe.embedding_length", d);
  w.add_uint("olmoe.feed_forward_length", f);
  w.add_uint("olmoe.expert_count", E);
  w.add_uint("olmoe.expert_used_count", 4);
  const auto router = random_vector(static_cast<std::size_t>(E * d), 0.05f, 1);
  w.add_tensor("blk.0.ffn_gate_inp.weight", 0, {static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(E)},
               std::as_bytes(std::span(router)));
  const auto quantised = [](const std::vector<float>& m, moe::index rows, moe::index cols) {
    std::vector<std::byte> b(static_cast<std::size_t>(rows) * fm::row_bytes<fm::q4_k>(cols));
    fm::quantize_rows<fm::q4_k>("demo", "w", m.data(), rows, cols, cols, b.data());
    return b;
  };
  const auto gate = random_vector(static_cast<std::size_t>(E * f * d), 0.04f, 2);
  const auto up = random_vector(static_cast<std::size_t>(E * f * d), 0.04f, 3);
  const auto down = random_vector(static_cast<std::size_t>(E * d * f), 0.06f, 4);
  const std::vector<std::uint64_t> gu = {static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(f), static_cast<std::uint64_t>(E)};
  const std::vector<std::uint64_t> dn = {static_cast<std::uint64_t>(f), static_cast<std::uint64_t>(d), static_cast<std::uint64_t>(E)};
  w.add_tensor("blk.0.ffn_gate_exps.weight", fm::q4_k::ggml_type, gu, quantised(gate, E * f, d));
  w.add_tensor("blk.0.ffn_up_exps.weight", fm::q4_k::ggml_type, gu, quantised(up, E * f, d));
  w.add_tensor("blk.0.ffn_down_exps.weight", fm::q4_k::ggml_type, dn, quantised(down, E * d, f));
  const auto path = (std::filesystem::temp_directory_path() / "moe_demo_olmoe.gguf").string();
  w.write(path);
  return path;
}

// Builds the layer for format F and router R, routes a batch and prints.
template <class F, class Router>
void run(const moe::io::checkpoint& ckpt, const moe::model_config& cfg, int layer_index, Router router) {
  using bank = moe::gated_mlp_experts<F>;
  const auto t0 = std::chrono::steady_clock::now();
  moe::layer<Router, bank, moe::device::cpu> layer(std::move(router), moe::io::load_quantized_experts<F>(ckpt, cfg, layer_index));
  const double load = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("layer %d: %s experts, %.1f MB packed, built in %.1f ms\n", layer_index, std::string(F::name).c_str(),
              layer.experts().bytes_per_expert() * static_cast<double>(cfg.experts) / 1e6, load * 1e3);
  const moe::index T = 64;
  const auto xv = random_vector(static_cast<std::size_t>(T * cfg.hidden), 1.0f, 9);
  const auto x = moe::map(xv.data(), T, cfg.hidden);
  moe::row_matrix<float> y(T, cfg.hidden);
  layer.forward(x, y);  // warm-up
  const auto t1 = std::chrono::steady_clock::now();
  layer.forward(x, y);
  const double fwd = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  std::printf("forward of %lld tokens: %.2f ms (%.0f tokens/s)\n", static_cast<long long>(T), fwd * 1e3, static_cast<double>(T) / fwd);
  std::cout << layer.stats();
}

// The router the model's description asks for, from the layer's router tensors.
template <class F>
void run_format(const moe::io::checkpoint& ckpt, const moe::model_config& cfg, int layer_index) {
  auto r = moe::io::load_router(ckpt, cfg, layer_index);
  if (cfg.gating == moe::model_gating::sigmoid) {
    auto options = cfg.group_limited();
    options.selection_bias = r.selection_bias;
    run<F>(ckpt, cfg, layer_index, moe::group_limited<moe::sigmoid_gate>(r.weight, options));
  } else if (cfg.gating == moe::model_gating::topk_then_softmax) {
    auto options = cfg.topk_softmax();
    options.logit_bias = r.logit_bias;
    run<F>(ckpt, cfg, layer_index, moe::topk_softmax(r.weight, options));
  } else {
    run<F>(ckpt, cfg, layer_index, moe::top_k<>(r.weight, cfg.top_k()));
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string path = argc > 1 ? argv[1] : write_demo_checkpoint();
    const int layer_index = argc > 2 ? std::stoi(argv[2]) : 0;
    const moe::io::checkpoint ckpt(path);
    const auto cfg = ckpt.config();
    std::printf("%s: %s, %lld layers, d %lld, %lld experts of f %lld, top-%d, %s%s\n", path.c_str(), cfg.model_type.c_str(),
                static_cast<long long>(cfg.layers), static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts),
                static_cast<long long>(cfg.moe_intermediate), cfg.experts_per_token,
                cfg.gating == moe::model_gating::sigmoid ? "sigmoid" : "softmax", cfg.renormalize ? ", renormalised" : "");
    if (!cfg.is_moe_layer(layer_index)) {
      std::printf("layer %d is not a MoE layer\n", layer_index);
      return 1;
    }
    const auto type = ckpt.tensor(moe::io::gguf_tensor_names(layer_index).gate).ggml_type;
    switch (type) {
      case fm::q8_0::ggml_type: run_format<fm::q8_0>(ckpt, cfg, layer_index); break;
      case fm::q4_0::ggml_type: run_format<fm::q4_0>(ckpt, cfg, layer_index); break;
      case fm::q4_k::ggml_type: run_format<fm::q4_k>(ckpt, cfg, layer_index); break;
      case fm::q6_k::ggml_type: run_format<fm::q6_k>(ckpt, cfg, layer_index); break;
      case fm::mxfp4::ggml_type: run_format<fm::mxfp4>(ckpt, cfg, layer_index); break;
      default: std::printf("expert tensors of GGML type %u are not a format this example loads\n", type); return 1;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return 0;
}
