// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// moe-route's core: a model (a checkpoint, or a synthetic model from a preset and a seed), its
// MoE layers, and the comparison of routing policies on them.
//
// Teacher forcing: the model's own layer (its router, experts and shared experts) runs once per
// layer on the layer's input x, and x + MoE(x) is the next selected layer's input; every policy is
// evaluated on that same x, so policies are compared on identical inputs and never on each other's
// drift. Only the MoE sublayers run (no attention, no norms): hidden states captured from the real
// model can be given per layer instead (a tensor name holding "{layer}").

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <moe/io/checkpoint.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/moe.hpp>

#include "policies.hpp"

namespace moe_route {

/// Runs an expert bank (and shared experts) for a given plan on the CPU device.
class expert_runner {
 public:
  virtual ~expert_runner() = default;
  /// y [T × d] = Σ_slots weight · Expert(x) (+ shared experts) for `plan` (expert-major view built).
  virtual void run(const moe::routing_plan& plan, moe::const_matrix_map<float> x, moe::matrix_map<float> y) = 0;
  /// FLOPs of one (token, expert) assignment: 6·d·f for SwiGLU.
  [[nodiscard]] virtual double flops_per_assignment() const = 0;
  /// FLOPs of the shared experts per token that runs (0 without).
  [[nodiscard]] virtual double shared_flops_per_token() const = 0;
};

template <class Bank>
class bank_runner final : public expert_runner {
 public:
  bank_runner(std::shared_ptr<const Bank> bank, std::optional<moe::shared_experts<Bank>> shared, int threads)
      : m_bank(std::move(bank)), m_shared(std::move(shared)), m_device(threads) {}
  void run(const moe::routing_plan& plan, moe::const_matrix_map<float> x, moe::matrix_map<float> y) override {
    const moe::layer_pass<Bank> pass{&plan, x, m_bank.get(), m_shared ? &*m_shared : nullptr, nullptr};
    m_ws.reset();
    m_ws.reserve(m_device.workspace_bytes(pass));
    m_device.run(pass, y, m_ws);
  }
  [[nodiscard]] double flops_per_assignment() const override { return m_bank->flops_per_row(); }
  [[nodiscard]] double shared_flops_per_token() const override {
    if (!m_shared) return 0.0;
    return 6.0 * static_cast<double>(m_shared->hidden()) * static_cast<double>(m_shared->bank().intermediate()) *
           static_cast<double>(m_shared->bank().num_experts());
  }

 private:
  std::shared_ptr<const Bank> m_bank;
  std::optional<moe::shared_experts<Bank>> m_shared;
  moe::device::cpu m_device;
  moe::workspace m_ws;
};

/// One MoE layer ready to run: its router weight, the model's own router and its experts.
struct model_layer {
  index layer = 0;
  moe::row_matrix<float> router_weight;  // [E × d]
  std::unique_ptr<routing_policy> own;   // the model's router
  std::unique_ptr<expert_runner> experts;
};

/// Where a model comes from and how it runs.
struct model_options {
  std::string checkpoint;      ///< a safetensors file or directory, a sharded index, a .gguf; empty: synthetic
  std::string preset = "olmoe";
  index dim = 512, ffn = 256, experts = 0, layers = 4;  ///< synthetic shape (experts 0: the preset's)
  std::uint64_t seed = 1;
  bool bf16 = false;  ///< experts in bf16 (fp32 arithmetic) instead of fp32
  int threads = 0;    ///< 0: OpenMP's default
};

/// A model: its description and a way to build each MoE layer.
class model {
 public:
  virtual ~model() = default;
  [[nodiscard]] virtual std::string describe() const = 0;
  [[nodiscard]] virtual std::string kind() const = 0;  ///< "checkpoint" or "synthetic"
  [[nodiscard]] virtual index layers() const = 0;
  [[nodiscard]] virtual bool is_moe_layer(index l) const = 0;
  [[nodiscard]] virtual index hidden() const = 0;
  [[nodiscard]] virtual index experts() const = 0;
  [[nodiscard]] virtual index intermediate() const = 0;
  [[nodiscard]] virtual int k() const = 0;
  [[nodiscard]] virtual bool renormalize() const = 0;
  [[nodiscard]] virtual model_layer load(index l) const = 0;
};

namespace detail {

inline void fill_uniform(float* v, std::size_t n, float scale, std::uint64_t seed) {
  for (std::size_t i = 0; i < n; ++i) {
    std::uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    v[i] = scale * (static_cast<float>((z ^ (z >> 31)) >> 40) * 0x1.0p-23f - 1.0f);
  }
}

template <class Bank>
std::unique_ptr<expert_runner> runner(Bank bank, std::optional<moe::shared_experts<Bank>> shared, int threads) {
  return std::make_unique<bank_runner<Bank>>(std::make_shared<const Bank>(std::move(bank)), std::move(shared), threads);
}

}  // namespace detail

/// A checkpoint read through moe::io::checkpoint: the router its config asks for
/// (moe::io::with_router) and its SwiGLU experts packed in fp32 or bf16, one layer at a time.
class checkpoint_model final : public model {
 public:
  explicit checkpoint_model(const model_options& o) : m_opt(o), m_ckpt(o.checkpoint), m_cfg(m_ckpt.config()) {}
  [[nodiscard]] std::string describe() const override {
    return m_opt.checkpoint + " (" + m_cfg.model_type + ", " + std::to_string(m_cfg.layers) + " layers, d " +
           std::to_string(m_cfg.hidden) + ", " + std::to_string(m_cfg.experts) + " experts of f " +
           std::to_string(m_cfg.moe_intermediate) + ", top-" + std::to_string(m_cfg.experts_per_token) + ")";
  }
  [[nodiscard]] std::string kind() const override { return "checkpoint"; }
  [[nodiscard]] index layers() const override { return m_cfg.layers; }
  [[nodiscard]] bool is_moe_layer(index l) const override { return m_cfg.is_moe_layer(l); }
  [[nodiscard]] index hidden() const override { return m_cfg.hidden; }
  [[nodiscard]] index experts() const override { return m_cfg.experts; }
  [[nodiscard]] index intermediate() const override { return m_cfg.moe_intermediate; }
  [[nodiscard]] int k() const override { return m_cfg.experts_per_token; }
  [[nodiscard]] bool renormalize() const override { return m_cfg.renormalize; }
  [[nodiscard]] model_layer load(index l) const override {
    const auto c = m_cfg.layer(l);
    auto rw = moe::io::load_router(m_ckpt, c, l);
    model_layer m;
    m.layer = l;
    m.router_weight = rw.weight.topRows(c.experts);
    const double flops = 2.0 * static_cast<double>(rw.weight.rows() * rw.weight.cols());
    m.own = moe::io::with_router(c, rw, [&](auto r) { return erase(std::move(r), flops); });
    if (m_opt.bf16) {
      m.experts = detail::runner(moe::io::load_experts<moe::bf16>(m_ckpt, c, l, m_opt.threads),
                                 moe::io::load_shared_experts<moe::bf16>(m_ckpt, c, l), m_opt.threads);
    } else {
      m.experts = detail::runner(moe::io::load_experts<float>(m_ckpt, c, l, m_opt.threads),
                                 moe::io::load_shared_experts<float>(m_ckpt, c, l), m_opt.threads);
    }
    return m;
  }

 private:
  model_options m_opt;
  moe::io::checkpoint m_ckpt;
  moe::model_config m_cfg;
};

/// The presets moe-route can build a synthetic model from.
inline std::vector<std::string> preset_names() {
  return {"olmoe", "mixtral", "qwen2_moe", "deepseek_v3", "jamba", "switch_transformer", "dit_moe"};
}

/// A synthetic model from a preset: the preset's router (E, k and options) over seeded router
/// weights, distinct in every layer, and ONE seeded expert bank that every layer shares (so that a
/// 16-layer model at the OLMoE shape fits in memory: 0.8 GB of bf16 experts instead of 12.9 GB).
class synthetic_model final : public model {
 public:
  explicit synthetic_model(const model_options& o) : m_opt(o) {
    const auto& p = o.preset;
    if (p == "olmoe") set(moe::presets::olmoe::num_experts, moe::presets::olmoe::k, false);
    else if (p == "mixtral") set(moe::presets::mixtral::num_experts, moe::presets::mixtral::k, true);
    else if (p == "qwen2_moe") set(moe::presets::qwen2_moe::num_experts, moe::presets::qwen2_moe::k, false);
    else if (p == "deepseek_v3") set(moe::presets::deepseek_v3::num_experts, moe::presets::deepseek_v3::k, true);
    else if (p == "jamba") set(moe::presets::jamba::num_experts, moe::presets::jamba::k, false);
    else if (p == "switch_transformer") set(o.experts > 0 ? o.experts : 8, moe::presets::switch_transformer::k, false);
    else if (p == "dit_moe") set(moe::presets::dit_moe::num_experts, moe::presets::dit_moe::k, false);
    else throw usage_error("--preset: unknown preset '" + p + "'; valid presets: " + detail::valid_list(preset_names()));
    if (o.experts > 0 && o.experts != m_experts && p != "switch_transformer") {
      throw usage_error("--experts " + std::to_string(o.experts) + ": preset '" + p + "' has " + std::to_string(m_experts) +
                        " experts (only switch_transformer takes any number)");
    }
    if (o.dim < 1 || o.ffn < 1 || o.layers < 1) throw usage_error("--dim, --ffn and --num-layers must be >= 1");
    const index E = m_experts, d = o.dim, f = o.ffn;
    std::vector<float> gate(static_cast<std::size_t>(E * f * d)), up(gate.size()), down(static_cast<std::size_t>(E * d * f));
    detail::fill_uniform(gate.data(), gate.size(), 1.7f / std::sqrt(static_cast<float>(d)), o.seed * 7 + 1);
    detail::fill_uniform(up.data(), up.size(), 1.7f / std::sqrt(static_cast<float>(d)), o.seed * 7 + 2);
    detail::fill_uniform(down.data(), down.size(), 1.7f / std::sqrt(static_cast<float>(f)), o.seed * 7 + 3);
    const moe::swiglu_shape shape{E, d, f};
    if (o.bf16) {
      m_bf16 = std::make_shared<const moe::swiglu_experts<moe::bf16>>(gate.data(), up.data(), down.data(), shape);
    } else {
      m_f32 = std::make_shared<const moe::swiglu_experts<float>>(gate.data(), up.data(), down.data(), shape);
    }
  }
  [[nodiscard]] std::string describe() const override {
    return "synthetic " + m_opt.preset + " (seed " + std::to_string(m_opt.seed) + ", " + std::to_string(m_opt.layers) +
           " layers sharing one expert bank, d " + std::to_string(m_opt.dim) + ", " + std::to_string(m_experts) +
           " experts of f " + std::to_string(m_opt.ffn) + ", top-" + std::to_string(m_k) + ")";
  }
  [[nodiscard]] std::string kind() const override { return "synthetic"; }
  [[nodiscard]] index layers() const override { return m_opt.layers; }
  [[nodiscard]] bool is_moe_layer(index l) const override { return l >= 0 && l < m_opt.layers; }
  [[nodiscard]] index hidden() const override { return m_opt.dim; }
  [[nodiscard]] index experts() const override { return m_experts; }
  [[nodiscard]] index intermediate() const override { return m_opt.ffn; }
  [[nodiscard]] int k() const override { return m_k; }
  [[nodiscard]] bool renormalize() const override { return m_renormalize; }
  [[nodiscard]] model_layer load(index l) const override {
    model_layer m;
    m.layer = l;
    const index d = m_opt.dim;
    m.router_weight.resize(m_experts, d);
    // Logits of unit spread for inputs uniform in [-1, 1): var(w·x) = d · (a²/3) · (1/3) = 1.
    detail::fill_uniform(m.router_weight.data(), static_cast<std::size_t>(m_experts * d), 3.0f / std::sqrt(static_cast<float>(d)),
                         m_opt.seed * 1000003ULL + static_cast<std::uint64_t>(l) * 7919ULL + 11);
    const double flops = 2.0 * static_cast<double>(m_experts * d);
    const auto& w = m.router_weight;
    const auto& p = m_opt.preset;
    if (p == "olmoe") m.own = erase(moe::presets::olmoe::make(w), flops);
    else if (p == "mixtral") m.own = erase(moe::presets::mixtral::make(w), flops);
    else if (p == "qwen2_moe") m.own = erase(moe::presets::qwen2_moe::make(w), flops);
    else if (p == "deepseek_v3") m.own = erase(moe::presets::deepseek_v3::make(w), flops);
    else if (p == "jamba") m.own = erase(moe::presets::jamba::make(w), flops);
    else if (p == "switch_transformer") m.own = erase(moe::presets::switch_transformer::make(w), flops);
    else m.own = erase(moe::presets::dit_moe::make(w), flops);
    if (m_bf16) {
      m.experts = std::make_unique<bank_runner<moe::swiglu_experts<moe::bf16>>>(m_bf16, std::nullopt, m_opt.threads);
    } else {
      m.experts = std::make_unique<bank_runner<moe::swiglu_experts<float>>>(m_f32, std::nullopt, m_opt.threads);
    }
    return m;
  }

 private:
  void set(index E, int k, bool renormalize) {
    m_experts = E;
    m_k = k;
    m_renormalize = renormalize;
  }
  model_options m_opt;
  index m_experts = 0;
  int m_k = 1;
  bool m_renormalize = false;
  std::shared_ptr<const moe::swiglu_experts<float>> m_f32;
  std::shared_ptr<const moe::swiglu_experts<moe::bf16>> m_bf16;
};

inline std::unique_ptr<model> open_model(const model_options& o) {
  if (!o.checkpoint.empty()) return std::make_unique<checkpoint_model>(o);
  return std::make_unique<synthetic_model>(o);
}

/// Parses `all`, `N`, `A-B` or a comma-separated list of those into MoE layer indices, ascending.
inline std::vector<index> parse_layers(const std::string& text, const model& m) {
  std::vector<index> out;
  std::string moe_layers;
  for (index l = 0; l < m.layers(); ++l) {
    if (m.is_moe_layer(l)) moe_layers += (moe_layers.empty() ? "" : ",") + std::to_string(l);
  }
  if (text == "all") {
    for (index l = 0; l < m.layers(); ++l) {
      if (m.is_moe_layer(l)) out.push_back(l);
    }
    return out;
  }
  const auto number = [&](const std::string& s) -> index {
    std::size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(s, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != s.size() || s.empty() || v < 0) {
      throw usage_error("--layers '" + text + "': '" + s + "' is not a layer number (write all, N, A-B or a list of those)");
    }
    return static_cast<index>(v);
  };
  std::size_t at = 0;
  while (at <= text.size()) {
    const auto comma = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, comma - at);
    const auto dash = item.find('-');
    const index lo = number(item.substr(0, dash));
    const index hi = dash == std::string::npos ? lo : number(item.substr(dash + 1));
    if (hi < lo) throw usage_error("--layers '" + text + "': range '" + item + "' is empty");
    for (index l = lo; l <= hi; ++l) {
      if (!m.is_moe_layer(l)) {
        throw usage_error("--layers '" + text + "': layer " + std::to_string(l) + " is not a MoE layer of the model; MoE layers: " +
                          moe_layers);
      }
      if (std::find(out.begin(), out.end(), l) == out.end()) out.push_back(l);
    }
    at = comma + 1;
  }
  std::sort(out.begin(), out.end());
  return out;
}

/// The hidden states: seeded rows, or tensors of a safetensors file (one for the first layer,
/// or one per layer when the name holds "{layer}").
struct hidden_source {
  std::string file;                        ///< empty: seeded random rows
  std::string name = "hidden_states";
  index tokens = 64;
  std::uint64_t seed = 1;

  [[nodiscard]] bool per_layer() const { return !file.empty() && name.find("{layer}") != std::string::npos; }

  /// The input of layer `l` ([T × d]); for a single tensor, the input of the first layer.
  [[nodiscard]] moe::row_matrix<float> read(index l, index d) const {
    if (file.empty()) {
      moe::row_matrix<float> x(tokens, d);
      detail::fill_uniform(x.data(), static_cast<std::size_t>(x.size()), 1.0f, seed * 31 + 5);
      return x;
    }
    std::string n = name;
    if (const auto p = n.find("{layer}"); p != std::string::npos) n.replace(p, 7, std::to_string(l));
    const moe::io::safetensors_file f(file);
    if (!f.has(n)) {
      std::string names;
      for (const auto& t : f.tensors()) names += (names.empty() ? "" : ", ") + t.name;
      moe::detail::fail_parameter(moe::error_id::input, "moe-route --hidden", "tensor", "one of " + names, n);
    }
    const auto& t = f.tensor(n);
    std::uint64_t rows = 1;
    for (std::size_t i = 0; i + 1 < t.shape.size(); ++i) rows *= t.shape[i];
    if (t.shape.empty() || t.shape.back() != static_cast<std::uint64_t>(d)) {
      moe::detail::fail_parameter(moe::error_id::shape, "moe-route --hidden", n + " last dimension", std::to_string(d),
                                  t.shape.empty() ? std::string("a scalar") : std::to_string(t.shape.back()));
    }
    const auto bytes = f.data(t);
    moe::row_matrix<float> x(static_cast<index>(rows), d);
    if (t.dtype == "F32") {
      std::memcpy(x.data(), bytes.data(), static_cast<std::size_t>(x.size()) * sizeof(float));
    } else if (t.dtype == "BF16") {
      for (index i = 0; i < x.size(); ++i) {
        std::uint16_t b = 0;
        std::memcpy(&b, bytes.data() + 2 * i, 2);
        const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
        std::memcpy(x.data() + i, &u, 4);
      }
    } else {
      moe::detail::fail_parameter(moe::error_id::input, "moe-route --hidden", n + " dtype", "F32 or BF16", t.dtype);
    }
    return x;
  }
};

/// What one policy did on one layer.
struct layer_result {
  index layer = 0;
  index tokens = 0;
  index assignments = 0;
  double experts_per_token = 0;
  std::vector<index> histogram;  ///< [max_slots + 1]: tokens with n active experts
  std::vector<index> load;       ///< [E]
  double max_over_mean_load = 0;
  double load_entropy = 0;
  index dropped = 0;
  index skipped = 0;
  index routed_nowhere = 0;
  double jaccard = 1;             ///< mean over tokens, against the model's own routing
  double output_rel_error = 0;    ///< ||y - y_model|| / ||y_model|| (NaN with --route-only)
  double gflops = 0;              ///< router + experts (+ shared experts)
  double route_seconds = 0;
  double expert_seconds = 0;
  double tokens_per_second = 0;   ///< T / (route + experts) seconds (routing alone with --route-only)
};

/// What one policy did over all layers.
struct policy_result {
  std::string name;  ///< "model" for the model's own router
  std::string spec;
  std::map<std::string, std::string> options;
  std::vector<layer_result> layers;
  std::vector<index> histogram;      ///< summed over layers
  std::vector<double> coactivation;  ///< [E × E]: tokens that chose both experts, summed over layers
  std::vector<float> heatmap;        ///< [heatmap_tokens × E]: weights on the first layer
  index heatmap_tokens = 0;
  // Totals.
  double experts_per_token = 0, gflops = 0, max_over_mean_load = 0, load_entropy = 0, jaccard = 0, output_rel_error = 0;
  index dropped = 0, skipped = 0, routed_nowhere = 0;
  double seconds = 0, tokens_per_second = 0;
};

struct analysis {
  std::string model_description;
  std::string model_kind;
  index hidden = 0, experts = 0, intermediate = 0, tokens = 0;
  int k = 0;
  std::vector<index> layers;
  std::vector<policy_result> policies;  ///< [0] is the model's own router
  double seconds = 0;
  bool route_only = false;
};

struct run_options {
  std::vector<policy_spec> policies;
  std::vector<index> layers;
  bool route_only = false;
  index heatmap_tokens = 64;
  /// Where to record the model's own routing of every analysed layer (`--capture`): sized on the
  /// first layer to [tokens × the model's layers × its k], with weights; null: no capture.
  moe::route_recording* capture = nullptr;
  /// A recording to replay as one more policy, "replay" (`--replay`): moe::forced_routes over
  /// top_k<softmax_gate> with the model's k and renormalisation (weights from the live logits),
  /// or the recorded weights as they are (`replay_weights = recorded`); null: none.
  const moe::route_recording* replay = nullptr;
  moe::replay_weights replay_weights = moe::replay_weights::live;
  /// Called after each layer with (layers done, layers in all).
  std::function<void(std::size_t, std::size_t)> progress;
};

namespace detail {

inline bool active(const moe::routing_plan& p, index t, index s) {
  const auto e = p.expert(t, s);
  return e >= 0 && e < p.num_experts() && p.weight(t, s) != 0.0f;
}

/// Clears the slots of tokens that skip the layer and builds the expert-major view. A repeated
/// token (passes >= 2) is run once: moe-route compares single passes.
inline void prepare(moe::routing_plan& plan) {
  for (index t = 0; t < plan.num_tokens(); ++t) {
    if (plan.passes(t) != 0) continue;
    for (index s = 0; s < plan.max_slots(); ++s) {
      if (plan.expert(t, s) != moe::no_expert) plan.set(t, s, moe::no_expert, 0.0f);
    }
  }
  plan.build_expert_major();
}

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Metrics of `plan` (and its output y) against the model's plan `ref` and output `y_ref`.
inline layer_result measure(const moe::routing_plan& plan, const moe::routing_plan& ref, const moe::row_matrix<float>* y,
                            const moe::row_matrix<float>& y_ref, const routing_policy& router, const expert_runner& ex,
                            policy_result& acc, bool first_layer, index heat_tokens) {
  layer_result r;
  const index T = plan.num_tokens(), E = plan.num_experts(), K = plan.max_slots();
  r.tokens = T;
  r.histogram.assign(static_cast<std::size_t>(K + 1), 0);
  r.load.assign(static_cast<std::size_t>(E), 0);
  if (acc.coactivation.empty()) acc.coactivation.assign(static_cast<std::size_t>(E * E), 0.0);
  if (first_layer && heat_tokens > 0) {
    acc.heatmap_tokens = std::min(T, heat_tokens);
    acc.heatmap.assign(static_cast<std::size_t>(acc.heatmap_tokens * E), 0.0f);
  }
  std::vector<char> a(static_cast<std::size_t>(E)), b(static_cast<std::size_t>(E));
  std::vector<index> chosen;
  double jaccard = 0;
  index running = 0;
  for (index t = 0; t < T; ++t) {
    std::fill(a.begin(), a.end(), 0);
    std::fill(b.begin(), b.end(), 0);
    chosen.clear();
    for (index s = 0; s < K; ++s) {
      if (!active(plan, t, s)) continue;
      const auto e = plan.expert(t, s);
      if (!a[static_cast<std::size_t>(e)]) chosen.push_back(e);
      a[static_cast<std::size_t>(e)] = 1;
      if (first_layer && t < acc.heatmap_tokens) acc.heatmap[static_cast<std::size_t>(t * E + e)] += plan.weight(t, s);
    }
    for (index s = 0; s < ref.max_slots(); ++s) {
      if (active(ref, t, s)) b[static_cast<std::size_t>(ref.expert(t, s))] = 1;
    }
    index inter = 0, uni = 0;
    for (index e = 0; e < E; ++e) {
      inter += a[static_cast<std::size_t>(e)] && b[static_cast<std::size_t>(e)];
      uni += a[static_cast<std::size_t>(e)] || b[static_cast<std::size_t>(e)];
    }
    jaccard += uni == 0 ? 1.0 : static_cast<double>(inter) / static_cast<double>(uni);
    const auto n = static_cast<index>(chosen.size());
    r.histogram[static_cast<std::size_t>(n)] += 1;
    r.assignments += n;
    r.routed_nowhere += n == 0;
    r.skipped += plan.passes(t) == 0;
    running += plan.passes(t) != 0;
    for (const auto e : chosen) {
      ++r.load[static_cast<std::size_t>(e)];
      for (const auto e2 : chosen) acc.coactivation[static_cast<std::size_t>(e * E + e2)] += 1.0;
    }
  }
  r.dropped = plan.dropped();
  r.jaccard = T > 0 ? jaccard / static_cast<double>(T) : 1.0;
  r.experts_per_token = T > 0 ? static_cast<double>(r.assignments) / static_cast<double>(T) : 0.0;
  if (r.assignments > 0) {
    index mx = 0;
    for (const index l : r.load) {
      mx = std::max(mx, l);
      if (l == 0) continue;
      const double q = static_cast<double>(l) / static_cast<double>(r.assignments);
      r.load_entropy -= q * std::log(q);
    }
    r.max_over_mean_load = static_cast<double>(mx) * static_cast<double>(E) / static_cast<double>(r.assignments);
  }
  r.gflops = (static_cast<double>(T) * router.router_flops_per_token() + static_cast<double>(r.assignments) * ex.flops_per_assignment() +
              static_cast<double>(running) * ex.shared_flops_per_token()) * 1e-9;
  if (y) {
    double num = 0, den = 0;
    for (index i = 0; i < y_ref.size(); ++i) {
      const double dv = static_cast<double>(y->data()[i]) - static_cast<double>(y_ref.data()[i]);
      num += dv * dv;
      den += static_cast<double>(y_ref.data()[i]) * static_cast<double>(y_ref.data()[i]);
    }
    r.output_rel_error = den > 0 ? std::sqrt(num / den) : (num > 0 ? INFINITY : 0.0);
  } else {
    r.output_rel_error = NAN;
  }
  return r;
}

inline void finish(policy_result& p, index E) {
  if (p.layers.empty()) return;
  const double n = static_cast<double>(p.layers.size());
  index tokens = 0;
  p.histogram.assign(p.layers.front().histogram.size(), 0);
  for (const auto& l : p.layers) {
    p.experts_per_token += l.experts_per_token / n;
    p.gflops += l.gflops;
    p.max_over_mean_load += l.max_over_mean_load / n;
    p.load_entropy += l.load_entropy / n;
    p.jaccard += l.jaccard / n;
    p.output_rel_error += l.output_rel_error / n;
    p.dropped += l.dropped;
    p.skipped += l.skipped;
    p.routed_nowhere += l.routed_nowhere;
    p.seconds += l.route_seconds + l.expert_seconds;
    tokens += l.tokens;
    for (std::size_t i = 0; i < l.histogram.size(); ++i) p.histogram[i] += l.histogram[i];
  }
  p.tokens_per_second = p.seconds > 0 ? static_cast<double>(tokens) / p.seconds : 0.0;
  (void)E;
}

}  // namespace detail

/// Runs the model's own router and every policy on the selected layers (teacher-forced).
inline analysis analyse(const model& m, const hidden_source& hidden, const run_options& o) {
  const auto t_start = std::chrono::steady_clock::now();
  analysis a;
  a.model_description = m.describe();
  a.model_kind = m.kind();
  a.hidden = m.hidden();
  a.experts = m.experts();
  a.intermediate = m.intermediate();
  a.k = m.k();
  a.layers = o.layers;
  a.route_only = o.route_only;
  a.policies.resize(o.policies.size() + 1 + (o.replay ? 1 : 0));
  a.policies[0].name = "model";
  a.policies[0].spec = "model";
  for (std::size_t i = 0; i < o.policies.size(); ++i) {
    a.policies[i + 1].name = o.policies[i].name;
    a.policies[i + 1].spec = o.policies[i].text;
    a.policies[i + 1].options = o.policies[i].options;
  }
  if (o.replay) {
    auto& p = a.policies.back();
    p.name = "replay";
    p.spec = o.replay_weights == moe::replay_weights::live ? "replay" : "replay:weights=recorded";
    p.options["weights"] = o.replay_weights == moe::replay_weights::live ? "live" : "recorded";
  }
  const index d = m.hidden();
  moe::row_matrix<float> x = hidden.read(o.layers.empty() ? 0 : o.layers.front(), d);  // [T × d]
  a.tokens = x.rows();
  moe::row_matrix<float> y_ref(x.rows(), d), y(x.rows(), d);  // [T × d]
  moe::routing_plan ref, plan;
  moe::workspace ws;
  const moe::route_context ctx{};
  for (std::size_t li = 0; li < o.layers.size(); ++li) {
    const index l = o.layers[li];
    if (li > 0 && hidden.per_layer()) {
      x = hidden.read(l, d);
      if (x.rows() != a.tokens) {
        moe::detail::fail_parameter(moe::error_id::shape, "moe-route --hidden", "rows of layer " + std::to_string(l),
                                    std::to_string(a.tokens), x.rows());
      }
    }
    model_layer ml = m.load(l);
    const layer_router base{&ml.router_weight, m.k(), m.renormalize(), l, 0};
    // The model's own layer.
    auto t0 = std::chrono::steady_clock::now();
    ws.reset();
    ml.own->route(moe::view(x), ctx, ref, ws);
    detail::prepare(ref);
    const double own_route = detail::seconds_since(t0);
    if (o.capture) {
      if (li == 0) *o.capture = moe::route_recording(x.rows(), m.layers(), ref.max_slots(), true, m.experts());
      o.capture->record(l, ref);
    }
    t0 = std::chrono::steady_clock::now();
    ml.experts->run(ref, moe::view(x), moe::view(y_ref));
    const double own_experts = detail::seconds_since(t0);
    {
      auto r = detail::measure(ref, ref, &y_ref, y_ref, *ml.own, *ml.experts, a.policies[0], li == 0, o.heatmap_tokens);
      r.layer = l;
      r.route_seconds = own_route;
      r.expert_seconds = own_experts;
      r.tokens_per_second = static_cast<double>(x.rows()) / std::max(own_route + own_experts, 1e-12);
      a.policies[0].layers.push_back(std::move(r));
    }
    const std::size_t evaluated = a.policies.size() - 1;
    for (std::size_t pi = 0; pi < evaluated; ++pi) {
      std::unique_ptr<routing_policy> router;
      if (pi < o.policies.size()) {
        const auto& spec = o.policies[pi];
        router = find_policy(spec.name, spec.text).build(base, spec);
      } else {  // the replayed recording
        const moe::top_k_options topk{.k = m.k(), .renormalize = m.renormalize()};
        router = erase(moe::forced_routes<moe::top_k<>>(moe::top_k<>(ml.router_weight, topk), *o.replay, l, {.weights = o.replay_weights}),
                       2.0 * static_cast<double>(ml.router_weight.size()));
      }
      t0 = std::chrono::steady_clock::now();
      ws.reset();
      router->route(moe::view(x), ctx, plan, ws);
      detail::prepare(plan);
      const double route_s = detail::seconds_since(t0);
      double expert_s = 0;
      if (!o.route_only) {
        t0 = std::chrono::steady_clock::now();
        ml.experts->run(plan, moe::view(x), moe::view(y));
        expert_s = detail::seconds_since(t0);
      }
      auto r = detail::measure(plan, ref, o.route_only ? nullptr : &y, y_ref, *router, *ml.experts, a.policies[pi + 1], li == 0,
                               o.heatmap_tokens);
      r.layer = l;
      r.route_seconds = route_s;
      r.expert_seconds = expert_s;
      r.tokens_per_second = static_cast<double>(x.rows()) / std::max(route_s + expert_s, 1e-12);
      a.policies[pi + 1].layers.push_back(std::move(r));
    }
    if (!hidden.per_layer()) x += y_ref;  // the next layer's input: the residual stream
    if (o.progress) o.progress(li + 1, o.layers.size());
  }
  for (auto& p : a.policies) detail::finish(p, a.experts);
  a.seconds = detail::seconds_since(t_start);
  return a;
}

}  // namespace moe_route
