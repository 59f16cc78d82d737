// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// A model's MoE layer N straight from its checkpoint (needs nlohmann-json): one tensor lookup over
// a safetensors file, a sharded safetensors checkpoint or a GGUF file; the names each family gives
// its router, biases, experts and shared experts (Hugging Face and llama.cpp naming); and loaders
// that build the router weights and the expert banks from the mapped tensors in place, converting
// bf16/fp16 only where the bank's type asks for it (docs/architecture.md, "Loading checkpoints").

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/core/views.hpp"
#include "moe/experts/mapped.hpp"
#include "moe/experts/quantized.hpp"
#include "moe/experts/shared.hpp"
#include "moe/experts/source.hpp"
#include "moe/experts/swiglu.hpp"
#include "moe/formats/mxfp4.hpp"
#include "moe/io/gguf.hpp"
#include "moe/io/model_config.hpp"
#include "moe/io/safetensors.hpp"
#include "moe/routing/routers/group_limited.hpp"
#include "moe/routing/routers/top_k.hpp"
#include "moe/routing/routers/sparsemixer.hpp"
#include "moe/routing/routers/topk_sigmoid.hpp"
#include "moe/routing/routers/topk_softmax.hpp"
#include "moe/routing/wrappers/identity_experts.hpp"
#include "moe/routing/wrappers/weigh_input.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace moe::io {

/// One tensor of a checkpoint: its dtype as the file names it ("F32", "BF16", "Q4_K", ...), its
/// shape outermost first (a GGUF tensor's dims reversed, so `[E, f, d]` for stacked experts in
/// both formats) and its bytes in the file's memory.
struct checkpoint_tensor {
  std::string name;
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::span<const std::byte> bytes;
  std::uint32_t ggml_type = 0;  ///< GGUF's type number (GGUF files only)
};

/// Tensors by name over a safetensors file, a sharded safetensors checkpoint (its
/// `model.safetensors.index.json`) or a GGUF file, opened (mapped) once, plus the model's
/// description: the `config.json` beside a safetensors checkpoint, the metadata of a GGUF file.
class checkpoint {
 public:
  /// Opens `path`: a `.gguf` file; a `.json` index of a sharded checkpoint; a `.safetensors`
  /// file; or a directory holding `model.safetensors.index.json` or `model.safetensors`.
  explicit checkpoint(const std::string& path) {
    namespace fs = std::filesystem;
    fs::path p(path);
    if (fs::is_directory(p)) {
      m_dir = p;
      if (fs::exists(p / "model.safetensors.index.json")) {
        p /= "model.safetensors.index.json";
      } else if (fs::exists(p / "model.safetensors")) {
        p /= "model.safetensors";
      } else {
        moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::checkpoint: directory '", path,
                                                                      "' holds neither model.safetensors.index.json nor model.safetensors"));
      }
    } else {
      m_dir = p.parent_path();
    }
    const auto ext = p.extension().string();
    if (ext == ".gguf") {
      m_gguf = std::make_shared<gguf_file>(p.string());
    } else if (ext == ".json") {
      m_index = std::make_shared<safetensors_index>(p.string());
    } else {
      m_file = std::make_shared<safetensors_file>(p.string());
    }
  }

  /// Shared ownership of the checkpoint's mapped files: the tensors' bytes stay valid while the
  /// returned pointer (or a copy) lives, after the checkpoint itself is gone. Banks that compute
  /// from the file in place (map_experts()) hold one.
  [[nodiscard]] std::shared_ptr<const void> keep_alive() const {
    struct files {
      std::shared_ptr<const safetensors_file> file;
      std::shared_ptr<const safetensors_index> index;
      std::shared_ptr<const gguf_file> gguf;
    };
    return std::make_shared<const files>(files{m_file, m_index, m_gguf});
  }

  [[nodiscard]] bool is_gguf() const noexcept { return m_gguf != nullptr; }
  [[nodiscard]] const gguf_file* gguf() const noexcept { return m_gguf.get(); }

  [[nodiscard]] bool has(std::string_view name) const {
    if (m_gguf) return m_gguf->has_tensor(name);
    if (m_index) return m_index->has(name);
    return m_file->has(name);
  }

  /// The tensor `name`; throws moe::error naming it when the checkpoint has none.
  [[nodiscard]] checkpoint_tensor tensor(std::string_view name) const {
    checkpoint_tensor t;
    t.name = std::string(name);
    if (m_gguf) {
      const auto& info = m_gguf->tensor(name);
      const auto* type = find_ggml_type(info.type);
      t.dtype = type ? type->name : "unknown";
      t.ggml_type = info.type;
      t.shape.assign(info.dims.rbegin(), info.dims.rend());
      t.bytes = m_gguf->data(info);
      return t;
    }
    const safetensors_file& f = m_index ? m_index->shard_of(name) : *m_file;
    const auto& info = f.tensor(name);
    t.dtype = info.dtype;
    t.shape = info.shape;
    t.bytes = f.data(info);
    return t;
  }

  /// The model's MoE description: from_gguf() of a GGUF file, else from_file() of the
  /// `config.json` in the checkpoint's directory.
  [[nodiscard]] model_config config() const {
    if (m_gguf) return model_config::from_gguf(*m_gguf);
    return model_config::from_file((m_dir / "config.json").string());
  }

 private:
  std::filesystem::path m_dir;
  std::shared_ptr<safetensors_file> m_file;
  std::shared_ptr<safetensors_index> m_index;
  std::shared_ptr<gguf_file> m_gguf;
};

/// How a family stores its routed experts.
enum class expert_layout : std::uint8_t {
  separate,           ///< one tensor per expert and matrix (`experts.{e}.gate_proj.weight`, [f, d] / [d, f])
  stacked,            ///< gate, up `[E, f, d]`, down `[E, d, f]` (GGUF's `ffn_*_exps`)
  fused_halves,       ///< gate|up `[E, 2f, d]`, gate first; down `[E, d, f]` (Granite's input_linear / output_linear)
  fused_halves_t,     ///< gate|up `[E, d, 2f]`, gate the first f columns; down `[E, f, d]` (Llama 4)
  fused_interleaved_t,///< gate|up `[E, d, 2f]`, gate the even columns; down `[E, f, d]`; biases (gpt-oss)
  dbrx,               ///< gate `w1`, up `v1` `[E·f, d]`; down `w2` `[E·f, d]`, each expert's `[f, d]` input-major
};

/// The names of one MoE layer's tensors in a checkpoint, as a family writes them. `{e}` in a
/// name stands for the expert number (expert_layout::separate). Empty: the family has no such
/// tensor.
struct moe_tensor_names {
  std::string router;          ///< `[E, d]`
  std::string router_bias;     ///< `[E]`, added to the logits (gpt-oss)
  std::string selection_bias;  ///< `[E]` (DeepSeek-V3's e_score_correction_bias: chooses, does not weigh)
  expert_layout layout = expert_layout::separate;
  std::string gate, up, down;  ///< fused layouts: `gate` names the fused gate|up tensor, `up` is empty
  std::string gate_up_bias;             ///< fused per-expert gate|up bias `[E, 2f]` (gpt-oss, Hugging Face)
  std::string gate_bias, up_bias;       ///< per-expert biases `[E, f]` (gpt-oss, GGUF)
  std::string down_bias;                ///< per-expert output bias `[E, d]` (gpt-oss)
  /// gpt-oss as published (MXFP4, transformers' Mxfp4GptOssExperts): per expert and output row,
  /// blocks of 32 E2M1 codes in 16 bytes, element 2i in the low nibble of byte i and 2i + 1 in
  /// its high nibble, and one E8M0 scale per block. gate|up output-major, gate on the even rows:
  /// `gate_blocks` U8 `[E, 2f, d/32, 16]`, `gate_scales` U8 `[E, 2f, d/32]`; down
  /// `down_blocks` U8 `[E, d, f/32, 16]`, `down_scales` U8 `[E, d, f/32]`.
  std::string gate_blocks, gate_scales, down_blocks, down_scales;
  std::string shared_gate, shared_up, shared_down;  ///< shared experts, together one MLP `[fs, d]` / `[d, fs]`
  std::string shared_expert_gate;                   ///< `[1, d]` sigmoid gate of the shared experts (Qwen2-MoE)
};

namespace detail::checkpoint_impl {
inline std::string expert_name(std::string_view pattern, index e) {
  std::string s(pattern);
  const auto at = s.find("{e}");
  if (at != std::string::npos) s.replace(at, 3, std::to_string(e));
  return s;
}
[[noreturn]] inline void fail(std::string_view what) {
  moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::checkpoint: ", what));
}
inline std::string shape_string(const std::vector<std::uint64_t>& s) {
  std::string out = "[";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}
inline void expect_shape(const checkpoint_tensor& t, const std::vector<std::uint64_t>& shape) {
  if (t.shape != shape) {
    moe::detail::fail_parameter(error_id::shape, "moe::io::checkpoint", moe::detail::concat("tensor '", t.name, "' shape"),
                                shape_string(shape), shape_string(t.shape));
  }
}
inline element_type dense_type(const checkpoint_tensor& t) {
  element_type type;
  if (t.dtype == "F32") {
    type = element_type::f32;
  } else if (t.dtype == "BF16") {
    type = element_type::bf16;
  } else if (t.dtype == "F16") {
    type = element_type::f16;
  } else {
    moe::detail::fail_parameter(error_id::input, "moe::io::checkpoint", moe::detail::concat("tensor '", t.name, "' dtype"),
                                "F32, BF16 or F16", t.dtype);
  }
  if (reinterpret_cast<std::uintptr_t>(t.bytes.data()) % element_bytes(type) != 0) {
    fail(moe::detail::concat("tensor '", t.name, "' is not aligned to its ", element_bytes(type), "-byte elements"));
  }
  return type;
}
inline std::uint64_t u(index v) { return static_cast<std::uint64_t>(v); }
}  // namespace detail::checkpoint_impl

/// The names of MoE layer `layer`'s tensors in a GGUF file (llama.cpp's: `blk.N.ffn_gate_inp`,
/// `ffn_{gate,up,down}_exps`, `exp_probs_b`, `ffn_*_shexp`, `ffn_gate_inp_shexp`).
inline moe_tensor_names gguf_tensor_names(index layer) {
  const std::string b = "blk." + std::to_string(layer) + ".";
  moe_tensor_names n;
  n.router = b + "ffn_gate_inp.weight";
  n.router_bias = b + "ffn_gate_inp.bias";
  n.selection_bias = b + "exp_probs_b.bias";
  n.layout = expert_layout::stacked;
  n.gate = b + "ffn_gate_exps.weight";
  n.up = b + "ffn_up_exps.weight";
  n.down = b + "ffn_down_exps.weight";
  n.gate_bias = b + "ffn_gate_exps.bias";
  n.up_bias = b + "ffn_up_exps.bias";
  n.down_bias = b + "ffn_down_exps.bias";
  n.shared_gate = b + "ffn_gate_shexp.weight";
  n.shared_up = b + "ffn_up_shexp.weight";
  n.shared_down = b + "ffn_down_shexp.weight";
  n.shared_expert_gate = b + "ffn_gate_inp_shexp.weight";
  return n;
}

/// The names of MoE layer `layer`'s tensors in a Hugging Face checkpoint of the family
/// `model_type`, under `prefix` (the decoder layers' prefix, e.g. "model.layers."; Llama 4's
/// multimodal checkpoints use "language_model.model.layers.", DBRX "transformer.blocks.").
/// Names that a family may or may not have (biases, shared experts) are given where the family's
/// reference code defines them; the loaders use them when the config says they exist. Throws
/// moe::error for a family whose naming this reader does not know.
inline moe_tensor_names hf_tensor_names(std::string_view model_type, index layer, std::string_view prefix = "model.layers.") {
  const std::string b = moe::detail::concat(prefix, layer, ".");
  const auto in = [&](std::initializer_list<std::string_view> names) {
    return std::find(names.begin(), names.end(), model_type) != names.end();
  };
  moe_tensor_names n;
  const auto separate = [&](const std::string& block, const char* g, const char* u, const char* d) {
    n.layout = expert_layout::separate;
    n.gate = block + "experts.{e}." + g + ".weight";
    n.up = block + "experts.{e}." + u + ".weight";
    n.down = block + "experts.{e}." + d + ".weight";
  };
  const auto shared = [&](const std::string& block) {
    n.shared_gate = block + "gate_proj.weight";
    n.shared_up = block + "up_proj.weight";
    n.shared_down = block + "down_proj.weight";
  };
  if (in({"mixtral", "phimoe", "minimax", "minimax_m2"})) {
    // MixtralSparseMoeBlock (and PhiMoE, MiniMax): block_sparse_moe.gate, experts.N.w1 (gate), w3 (up), w2 (down).
    const std::string m = b + "block_sparse_moe.";
    n.router = m + "gate.weight";
    n.selection_bias = m + "e_score_correction_bias";  // MiniMax-M2's use_routing_bias
    separate(m, "w1", "w3", "w2");
  } else if (in({"qwen2_moe", "qwen3_next"})) {
    const std::string m = b + "mlp.";
    n.router = m + "gate.weight";
    separate(m, "gate_proj", "up_proj", "down_proj");
    shared(m + "shared_expert.");
    n.shared_expert_gate = m + "shared_expert_gate.weight";
  } else if (in({"qwen3_moe", "olmoe"})) {
    const std::string m = b + "mlp.";
    n.router = m + "gate.weight";
    separate(m, "gate_proj", "up_proj", "down_proj");
  } else if (in({"deepseek_v3", "kimi_k2", "glm4_moe", "dots1", "deepseek_v2"})) {
    const std::string m = b + "mlp.";
    n.router = m + "gate.weight";
    n.selection_bias = m + "gate.e_score_correction_bias";
    separate(m, "gate_proj", "up_proj", "down_proj");
    shared(m + "shared_experts.");
  } else if (in({"ernie4_5_moe"})) {
    const std::string m = b + "mlp.";
    n.router = m + "gate.weight";
    n.selection_bias = m + "moe_statics.e_score_correction_bias";
    separate(m, "gate_proj", "up_proj", "down_proj");
    shared(m + "shared_experts.");
  } else if (in({"hunyuan_v1_moe"})) {
    const std::string m = b + "mlp.";
    n.router = m + "gate.wg.weight";
    separate(m, "gate_proj", "up_proj", "down_proj");
    shared(m + "shared_mlp.");
  } else if (in({"longcat_flash"})) {
    const std::string m = b + "mlp.";
    n.router = m + "router.classifier.weight";
    n.router_bias = m + "router.classifier.bias";  // LongcatFlashTopkRouter's classifier, when router_bias
    n.selection_bias = m + "router.e_score_correction_bias";
    separate(m, "gate_proj", "up_proj", "down_proj");
  } else if (in({"gpt_oss"})) {
    const std::string m = b + "mlp.";
    n.router = m + "router.weight";
    n.router_bias = m + "router.bias";
    n.layout = expert_layout::fused_interleaved_t;
    n.gate = m + "experts.gate_up_proj";
    n.down = m + "experts.down_proj";
    n.gate_up_bias = m + "experts.gate_up_proj_bias";
    n.down_bias = m + "experts.down_proj_bias";
    n.gate_blocks = m + "experts.gate_up_proj_blocks";
    n.gate_scales = m + "experts.gate_up_proj_scales";
    n.down_blocks = m + "experts.down_proj_blocks";
    n.down_scales = m + "experts.down_proj_scales";
  } else if (in({"llama4", "llama4_text"})) {
    const std::string m = b + "feed_forward.";
    n.router = m + "router.weight";
    n.layout = expert_layout::fused_halves_t;
    n.gate = m + "experts.gate_up_proj";
    n.down = m + "experts.down_proj";
    shared(m + "shared_expert.");
  } else if (in({"granitemoe", "granitemoeshared"})) {
    const std::string m = b + "block_sparse_moe.";
    n.router = m + "router.layer.weight";
    n.layout = expert_layout::fused_halves;
    n.gate = m + "input_linear.weight";
    n.down = m + "output_linear.weight";
    // GraniteMoeSharedMLP: one fused input_linear [2fs, d] and output_linear [d, fs].
    n.shared_gate = b + "shared_mlp.input_linear.weight";
    n.shared_down = b + "shared_mlp.output_linear.weight";
  } else if (in({"dbrx"})) {
    const std::string m = b + "ffn.";
    n.router = m + "router.layer.weight";
    n.layout = expert_layout::dbrx;
    n.gate = m + "experts.mlp.w1";
    n.up = m + "experts.mlp.v1";
    n.down = m + "experts.mlp.w2";
  } else {
    detail::checkpoint_impl::fail(moe::detail::concat("no tensor naming is known for the model family '", model_type, "'"));
  }
  return n;
}

/// The names of MoE layer `layer` in `ckpt`: llama.cpp's for a GGUF file, else the family's
/// Hugging Face names under the first of the usual prefixes under which the router exists.
inline moe_tensor_names tensor_names(const checkpoint& ckpt, const model_config& cfg, index layer) {
  if (ckpt.is_gguf()) return gguf_tensor_names(layer);
  for (std::string_view prefix : {"model.layers.", "language_model.model.layers.", "model.language_model.layers.", "transformer.blocks."}) {
    auto n = hf_tensor_names(cfg.model_type, layer, prefix);
    if (ckpt.has(n.router)) return n;
  }
  auto n = hf_tensor_names(cfg.model_type, layer);
  detail::checkpoint_impl::fail(moe::detail::concat("layer ", layer, " has no router tensor '", n.router,
                                                    "' (nor under the other known prefixes)"));
}

/// A dense tensor `[rows × cols]` (a 1-D tensor of `cols` values when rows is 0) as fp32, from
/// F32, BF16 or F16. Throws moe::error naming the tensor for another dtype or shape.
inline row_matrix<float> load_matrix(const checkpoint& ckpt, std::string_view name, index rows, index cols) {
  namespace ci = detail::checkpoint_impl;
  const auto t = ckpt.tensor(name);
  if (rows == 0) {
    // Vectors: [cols], or [1, cols] as some families store them (ERNIE's moe_statics).
    if (t.shape.size() == 2 && t.shape[0] == 1) {
      ci::expect_shape(t, {1, ci::u(cols)});
    } else {
      ci::expect_shape(t, {ci::u(cols)});
    }
  } else {
    ci::expect_shape(t, {ci::u(rows), ci::u(cols)});
  }
  const auto src = weight_source::stacked(ci::dense_type(t), t.bytes.data(), 1, std::max<index>(rows, 1), cols);
  row_matrix<float> m(std::max<index>(rows, 1), cols);
  moe::detail::with_source(src, 0, [&](auto at) {
    for (index r = 0; r < m.rows(); ++r) {
      for (index c = 0; c < cols; ++c) m(r, c) = static_cast<float>(at(r, c));
    }
  });
  return m;
}

/// A vector of `n` values as fp32 (see load_matrix()).
inline std::vector<float> load_vector(const checkpoint& ckpt, std::string_view name, index n) {
  const auto m = load_matrix(ckpt, name, 0, n);
  return {m.data(), m.data() + n};
}

/// The router of a MoE layer: its weight `[E × d]`, the logit bias (gpt-oss) and the selection
/// bias (DeepSeek-V3-style `e_score_correction_bias`), empty where the model has none.
struct router_weights {
  row_matrix<float> weight;
  std::vector<float> logit_bias;
  std::vector<float> selection_bias;
};

/// Reads layer `layer`'s router weights (`[E + identity_experts, d]`: LongCat-Flash's router also
/// scores its identity experts); the biases are read when the config says the model has them
/// (`router_bias`, `selection_bias`), and their absence is then an error. Per-layer counts
/// (Hunyuan) are the layer's.
inline router_weights load_router(const checkpoint& ckpt, const model_config& cfg, index layer) {
  if (!cfg.is_moe_layer(layer)) {
    moe::detail::fail_parameter(error_id::config, "moe::io::load_router", "layer", "a MoE layer of the model", layer);
  }
  const auto c = cfg.layer(layer);
  const auto names = tensor_names(ckpt, c, layer);
  const index columns = c.experts + c.identity_experts;  // LongCat's router also scores its identity experts
  router_weights r;
  r.weight = load_matrix(ckpt, names.router, columns, c.hidden);
  if (c.router_bias) r.logit_bias = load_vector(ckpt, names.router_bias, columns);
  if (c.selection_bias) r.selection_bias = load_vector(ckpt, names.selection_bias, columns);
  return r;
}

/// The router that a model's description asks for, built from its router weights: a preset
/// as data (E, k and every option from the config, none hard-coded). Calls `f(router)` with
///   - moe::top_k<softmax_gate> for softmax gating in one group (the selection bias, when the
///     model has one, chooses and does not weigh: ERNIE 4.5, LongCat-Flash);
///   - moe::group_limited<softmax_gate> (group score `max`, DeepSeek-V2) for softmax in groups;
///   - moe::group_limited<sigmoid_gate> for sigmoid gating (DeepSeek-V3, Kimi K2, GLM-4.5,
///     dots.llm1, MiniMax-M2);
///   - moe::topk_softmax for top-k-then-softmax gating, with the logit bias (gpt-oss, Granite);
///   - moe::topk_sigmoid (Llama 4) and moe::sparsemixer (Phi-3.5-MoE);
/// wrapped in moe::weigh_input when the weights go on the expert input (Llama 4) and in
/// moe::identity_experts when the model has identity experts (LongCat-Flash: the router weight
/// and selection bias then cover `E + identity_experts` columns). Returns what f returns, which
/// must be one type for every router. A floor on the renormalisation sum (ERNIE 4.5, Hunyuan) is
/// top_k_options::renormalize_floor. Throws moe::error for what no router here computes (a
/// p-norm other than the sum, a floor with sigmoid or grouped gating, a logit bias on a router
/// that does not add one) and for a model whose counts differ per layer (pass `cfg.layer(l)`).
template <class F>
auto with_router(const model_config& cfg, const router_weights& rw, F&& f) -> decltype(f(std::declval<top_k<softmax_gate>>())) {
  constexpr const char* where = "moe::io::with_router";
  if (!cfg.layer_shapes.empty()) {
    moe::detail::fail_parameter(error_id::config, where, "cfg", "one layer's description (cfg.layer(l): the counts differ per layer)",
                                "the whole model's");
  }
  if (cfg.renormalize && cfg.renormalize_p != 1.0f) {
    moe::detail::fail_parameter(error_id::config, where, "cfg.renormalize_p", "1 (division by the sum)", cfg.renormalize_p);
  }
  if (cfg.renormalize && cfg.renormalize_min > 0.0f && cfg.gating != model_gating::softmax) {
    moe::detail::fail_parameter(error_id::config, where, "cfg.renormalize_min", "0 for non-softmax gating", cfg.renormalize_min);
  }
  if (cfg.renormalize && cfg.renormalize_min > 0.0f && cfg.n_groups > 1) {
    moe::detail::fail_parameter(error_id::config, where, "cfg.renormalize_min", "0 for group-limited routing", cfg.renormalize_min);
  }
  // A router logit bias (added to the logits before the gate) only topk_softmax takes.
  if (!rw.logit_bias.empty() && cfg.gating != model_gating::topk_then_softmax) {
    moe::detail::fail_parameter(error_id::config, where, "rw.logit_bias", "empty for this gating (only top-k-then-softmax adds a logit bias)",
                                rw.logit_bias.size());
  }
  const auto& w = rw.weight;
  const int k = cfg.experts_per_token;
  // The base router, then the wrappers the description asks for.
  const auto finish = [&](auto base) {
    if (cfg.identity_experts > 0) {
      if (cfg.weight_on_input) {
        moe::detail::fail_parameter(error_id::config, where, "cfg", "identity experts or weights on the input", "both");
      }
      return f(identity_experts<decltype(base)>(std::move(base), cfg.identity_experts));
    }
    if (cfg.weight_on_input) return f(weigh_input<decltype(base)>(std::move(base)));
    return f(std::move(base));
  };
  switch (cfg.gating) {
    case model_gating::sigmoid:
      return finish(group_limited<sigmoid_gate>(w, {.k = k, .n_groups = cfg.n_groups, .topk_groups = cfg.topk_groups,
                                                    .renormalize = cfg.renormalize, .route_scale = cfg.route_scale,
                                                    .selection_bias = rw.selection_bias}));
    case model_gating::topk_then_softmax:
      return finish(topk_softmax(w, {.k = k, .logit_bias = rw.logit_bias}));
    case model_gating::sigmoid_topk:
      return finish(topk_sigmoid(w, {.k = k, .renormalize = cfg.renormalize, .renormalize_floor = cfg.renormalize_min,
                                     .route_scale = cfg.route_scale, .selection_bias = rw.selection_bias}));
    case model_gating::sparsemixer:
      return finish(sparsemixer(w, {.k = k, .jitter_eps = cfg.jitter_eps}));
    case model_gating::softmax:
    default:
      if (cfg.n_groups > 1) {
        return finish(group_limited<softmax_gate>(w, {.k = k, .n_groups = cfg.n_groups, .topk_groups = cfg.topk_groups,
                                                      .score = group_score::max, .renormalize = cfg.renormalize,
                                                      .route_scale = cfg.route_scale, .selection_bias = rw.selection_bias}));
      }
      return finish(top_k<softmax_gate>(w, {.k = k, .renormalize = cfg.renormalize, .renormalize_floor = cfg.renormalize_min,
                                            .route_scale = cfg.route_scale, .selection_bias = rw.selection_bias}));
  }
}

namespace detail::checkpoint_impl {
/// The three weight sources (gate, up `[f × d]`, down `[d × f]` per expert) of `experts`
/// experts of width f in the layout of `n`, checked against the tensors' dtypes and shapes.
struct ffn_sources {
  weight_source gate, up, down;
};
inline ffn_sources dense_sources(const checkpoint& ckpt, const moe_tensor_names& n, index E, index d, index f) {
  ffn_sources s;
  const auto stacked_t = [&](const std::string& name, std::vector<std::uint64_t> shape) {
    auto t = ckpt.tensor(name);
    expect_shape(t, shape);
    return t;
  };
  switch (n.layout) {
    case expert_layout::separate: {
      std::vector<const void*> g, up, dn;
      element_type tg{}, tu{}, td{};
      for (index e = 0; e < E; ++e) {
        const auto a = stacked_t(expert_name(n.gate, e), {u(f), u(d)});
        const auto b = stacked_t(expert_name(n.up, e), {u(f), u(d)});
        const auto c = stacked_t(expert_name(n.down, e), {u(d), u(f)});
        const element_type ta = dense_type(a), tb = dense_type(b), tc = dense_type(c);
        if (e == 0) {
          tg = ta, tu = tb, td = tc;
        } else if (ta != tg || tb != tu || tc != td) {
          fail(moe::detail::concat("expert ", e, "'s tensors have dtypes ", a.dtype, "/", b.dtype, "/", c.dtype,
                                   " where expert 0's are ", element_name(tg), "/", element_name(tu), "/", element_name(td)));
        }
        g.push_back(a.bytes.data());
        up.push_back(b.bytes.data());
        dn.push_back(c.bytes.data());
      }
      s.gate = weight_source::separate(tg, std::move(g), f, d);
      s.up = weight_source::separate(tu, std::move(up), f, d);
      s.down = weight_source::separate(td, std::move(dn), d, f);
      return s;
    }
    case expert_layout::stacked: {
      const auto a = stacked_t(n.gate, {u(E), u(f), u(d)});
      const auto b = stacked_t(n.up, {u(E), u(f), u(d)});
      const auto c = stacked_t(n.down, {u(E), u(d), u(f)});
      s.gate = weight_source::stacked(dense_type(a), a.bytes.data(), E, f, d);
      s.up = weight_source::stacked(dense_type(b), b.bytes.data(), E, f, d);
      s.down = weight_source::stacked(dense_type(c), c.bytes.data(), E, d, f);
      return s;
    }
    case expert_layout::fused_halves: {
      const auto a = stacked_t(n.gate, {u(E), u(2 * f), u(d)});
      const auto c = stacked_t(n.down, {u(E), u(d), u(f)});
      const element_type ta = dense_type(a);
      s.gate = weight_source::stacked(ta, a.bytes.data(), E, f, d);
      s.gate.expert_stride = 2 * f * d;
      s.up = s.gate;
      s.up.data = a.bytes.data() + static_cast<std::size_t>(f * d) * element_bytes(ta);
      s.down = weight_source::stacked(dense_type(c), c.bytes.data(), E, d, f);
      return s;
    }
    case expert_layout::fused_halves_t:
    case expert_layout::fused_interleaved_t: {
      const bool inter = n.layout == expert_layout::fused_interleaved_t;
      const auto a = stacked_t(n.gate, {u(E), u(d), u(2 * f)});
      const auto c = stacked_t(n.down, {u(E), u(f), u(d)});
      const element_type ta = dense_type(a);
      // Element (e, j, kk) of the gate: expert e's row kk (input), column j (halves) or 2j (interleaved).
      s.gate = {.type = ta, .experts = E, .rows = f, .cols = d, .data = a.bytes.data(), .expert_stride = 2 * f * d,
                .row_stride = inter ? 2 : 1, .col_stride = 2 * f};
      s.up = s.gate;
      s.up.data = a.bytes.data() + static_cast<std::size_t>(inter ? 1 : f) * element_bytes(ta);
      s.down = weight_source::stacked_transposed(dense_type(c), c.bytes.data(), E, d, f);
      return s;
    }
    case expert_layout::dbrx: {
      const auto a = stacked_t(n.gate, {u(E * f), u(d)});
      const auto b = stacked_t(n.up, {u(E * f), u(d)});
      const auto c = stacked_t(n.down, {u(E * f), u(d)});
      s.gate = weight_source::stacked(dense_type(a), a.bytes.data(), E, f, d);
      s.up = weight_source::stacked(dense_type(b), b.bytes.data(), E, f, d);
      s.down = weight_source::stacked_transposed(dense_type(c), c.bytes.data(), E, d, f);
      return s;
    }
  }
  fail("unknown expert layout");
}
}  // namespace detail::checkpoint_impl

/// The routed experts of MoE layer `layer` as a moe::swiglu_experts<Scalar> (float or bf16),
/// packed from the checkpoint's tensors in place (F32, BF16 or F16, in the family's layout), on
/// up to `threads` threads; each expert's file pages are dropped from the process's resident set
/// once packed (they stay in the page cache), so the load's peak memory is about the packed
/// bank. The model's experts must be SwiGLU MLPs without biases; gpt-oss's
/// (clamped SwiGLU with biases) are refused with a moe::error, as are quantized tensors (use
/// load_quantized_experts()).
template <class Scalar = float>
swiglu_experts<Scalar> load_experts(const checkpoint& ckpt, const model_config& cfg, index layer, int threads = 0) {
  namespace ci = detail::checkpoint_impl;
  if (!cfg.is_moe_layer(layer)) {
    moe::detail::fail_parameter(error_id::config, "moe::io::load_experts", "layer", "a MoE layer of the model", layer);
  }
  const auto n = tensor_names(ckpt, cfg, layer);
  if (!n.gate_up_bias.empty() || cfg.model_type == "gpt-oss" || cfg.model_type == "gpt_oss") {
    ci::fail(moe::detail::concat("the experts of '", cfg.model_type,
                                 "' have biases and a clamped SwiGLU, which moe::swiglu_experts does not compute; use "
                                 "load_quantized_experts<moe::formats::mxfp4, moe::act::clamped_swiglu>()"));
  }
  const auto c = cfg.layer(layer);
  auto s = ci::dense_sources(ckpt, n, c.experts, c.hidden, c.moe_intermediate);
  // The checkpoint's tensors are file mappings: each expert's pages leave the resident set once
  // packed, so a load holds the packed bank plus about one expert per thread.
  for (auto* src : {&s.gate, &s.up, &s.down}) src->release_after_packing = true;
  return swiglu_experts<Scalar>(s.gate, s.up, s.down, threads);
}

namespace detail::checkpoint_impl {
/// The sources of the shared experts of a layer `c` (all of them as one MLP of width
/// `shared_intermediate`): separate gate, up and down, or Granite's fused `[2fs, d]` input matrix.
inline ffn_sources shared_sources(const checkpoint& ckpt, const moe_tensor_names& n, const model_config& c) {
  const index d = c.hidden, fs = c.shared_intermediate;
  ffn_sources s;
  const auto dn = ckpt.tensor(n.shared_down);
  expect_shape(dn, {u(d), u(fs)});
  s.down = weight_source::stacked(dense_type(dn), dn.bytes.data(), 1, d, fs);
  if (n.shared_up.empty()) {  // one fused [2fs, d] input matrix (Granite)
    const auto a = ckpt.tensor(n.shared_gate);
    expect_shape(a, {u(2 * fs), u(d)});
    const element_type ta = dense_type(a);
    s.gate = weight_source::stacked(ta, a.bytes.data(), 1, fs, d);
    s.up = s.gate;
    s.up.data = a.bytes.data() + static_cast<std::size_t>(fs * d) * element_bytes(ta);
  } else {
    const auto a = ckpt.tensor(n.shared_gate), b = ckpt.tensor(n.shared_up);
    expect_shape(a, {u(fs), u(d)});
    expect_shape(b, {u(fs), u(d)});
    s.gate = weight_source::stacked(dense_type(a), a.bytes.data(), 1, fs, d);
    s.up = weight_source::stacked(dense_type(b), b.bytes.data(), 1, fs, d);
  }
  return s;
}

/// Faults the pages of every expert of `s` into the process's page tables (madvise
/// MADV_POPULATE_READ; where the kernel lacks it, a read of one byte per page), experts split
/// between up to `threads` threads. Pages not in the page cache are read from the file.
inline void populate(const weight_source& s, int threads) {
#if defined(__unix__) || defined(__APPLE__)
  static const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const index E = s.experts;
  const int nt = static_cast<int>(std::clamp<index>(threads > 0 ? threads : moe::detail::default_threads(), 1, std::max<index>(E, 1)));
  moe::detail::parallel_region(nt, [&](int tid, int team, auto&&) {
    for (index e = E * tid / team; e < E * (tid + 1) / team; ++e) {
      const auto begin = reinterpret_cast<std::uintptr_t>(s.base(e)) / page * page;
      const auto end = reinterpret_cast<std::uintptr_t>(s.base(e)) + s.expert_extent();
      if (end <= begin) continue;
#if defined(__linux__)
#ifndef MADV_POPULATE_READ
      constexpr int MADV_POPULATE_READ = 22;  // Linux 5.14
#endif
      if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ) == 0) continue;
#endif
      unsigned char sink = 0;
      for (std::uintptr_t a = begin; a < end; a += page) sink ^= *reinterpret_cast<const volatile unsigned char*>(a);
      (void)sink;
    }
  });
#else
  (void)s;
  (void)threads;
#endif
}

/// Refuses sources that the in-place bank cannot read (rows not contiguous), naming the family.
inline void expect_rows_in_place(const model_config& cfg, const ffn_sources& s) {
  for (const auto* src : {&s.gate, &s.up, &s.down}) {
    if (src->col_stride != 1) {
      fail(moe::detail::concat("the experts of '", cfg.model_type,
                               "' are stored input-major, which cannot be computed in place; use load_experts() to pack them"));
    }
  }
}
}  // namespace detail::checkpoint_impl

/// The shared experts of MoE layer `layer` (all of them as one SwiGLU MLP of width
/// `shared_intermediate`, as the families store them), with their sigmoid gate where the model
/// has one; std::nullopt for a model without shared experts.
template <class Scalar = float>
std::optional<shared_experts<swiglu_experts<Scalar>>> load_shared_experts(const checkpoint& ckpt, const model_config& cfg,
                                                                          index layer, int threads = 0) {
  namespace ci = detail::checkpoint_impl;
  const auto c = cfg.layer(layer);
  if (c.shared_experts == 0) return std::nullopt;
  const auto n = tensor_names(ckpt, c, layer);
  const auto s = ci::shared_sources(ckpt, n, c);
  swiglu_experts<Scalar> bank(s.gate, s.up, s.down, threads);
  if (!c.shared_gate) return shared_experts<swiglu_experts<Scalar>>(std::move(bank));
  return shared_experts<swiglu_experts<Scalar>>(std::move(bank), load_vector(ckpt, n.shared_expert_gate, c.hidden));
}

/// How map_experts() and map_shared_experts() prepare a bank.
struct map_options {
  /// Fault the experts' pages into the process now, on `threads` threads (from the page cache,
  /// or from the file where they are not cached), so that the first pass reads them at memory
  /// speed; false: on first use.
  bool populate = true;
  int threads = 0;  ///< 0: all
};

/// The routed experts of MoE layer `layer` computed in place from the checkpoint's tensors
/// (moe::mapped_swiglu_experts: F32, BF16 or F16, nothing packed or copied; the bank keeps the
/// checkpoint's files mapped). The layout must have contiguous rows (`[out × in]` tensors: the
/// Hugging Face families with separate or stacked experts, Granite, GGUF); input-major layouts
/// (Llama 4, DBRX's w2, gpt-oss) and quantized tensors are refused with a moe::error (use
/// load_experts() or load_quantized_experts()), as are experts with biases.
inline mapped_swiglu_experts map_experts(const checkpoint& ckpt, const model_config& cfg, index layer, const map_options& opt = {}) {
  namespace ci = detail::checkpoint_impl;
  if (!cfg.is_moe_layer(layer)) {
    moe::detail::fail_parameter(error_id::config, "moe::io::map_experts", "layer", "a MoE layer of the model", layer);
  }
  const auto n = tensor_names(ckpt, cfg, layer);
  if (!n.gate_up_bias.empty() || cfg.model_type == "gpt-oss" || cfg.model_type == "gpt_oss") {
    ci::fail(moe::detail::concat("the experts of '", cfg.model_type,
                                 "' have biases and a clamped SwiGLU, which moe::mapped_swiglu_experts does not compute"));
  }
  const auto c = cfg.layer(layer);
  const auto s = ci::dense_sources(ckpt, n, c.experts, c.hidden, c.moe_intermediate);
  ci::expect_rows_in_place(cfg, s);
  mapped_swiglu_experts bank(s.gate, s.up, s.down, ckpt.keep_alive());
  if (opt.populate) {
    for (const auto* src : {&s.gate, &s.up, &s.down}) ci::populate(*src, opt.threads);
  }
  return bank;
}

/// The shared experts of MoE layer `layer` in place (as load_shared_experts(), over
/// moe::mapped_swiglu_experts), for a layer whose routed experts come from map_experts().
inline std::optional<shared_experts<mapped_swiglu_experts>> map_shared_experts(const checkpoint& ckpt, const model_config& cfg,
                                                                               index layer, const map_options& opt = {}) {
  namespace ci = detail::checkpoint_impl;
  const auto c = cfg.layer(layer);
  if (c.shared_experts == 0) return std::nullopt;
  const auto n = tensor_names(ckpt, c, layer);
  const auto s = ci::shared_sources(ckpt, n, c);
  ci::expect_rows_in_place(cfg, s);
  mapped_swiglu_experts bank(s.gate, s.up, s.down, ckpt.keep_alive());
  if (opt.populate) {
    for (const auto* src : {&s.gate, &s.up, &s.down}) ci::populate(*src, opt.threads);
  }
  if (!c.shared_gate) return shared_experts<mapped_swiglu_experts>(std::move(bank));
  return shared_experts<mapped_swiglu_experts>(std::move(bank), load_vector(ckpt, n.shared_expert_gate, c.hidden));
}

namespace detail::checkpoint_impl {
/// Drops the whole pages of `[p, p + n)` from the process's resident set (a read-only file
/// mapping: the page cache keeps them), once they have been converted.
inline void release_bytes(const std::byte* p, std::size_t n) noexcept {
#if defined(__unix__) || defined(__APPLE__)
  static const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = (begin + page - 1) / page * page, last = (begin + n) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#else
  (void)p;
  (void)n;
#endif
}

/// One of gpt-oss's Hugging Face MXFP4 weights: its blocks `[E, rows, cols/32, 16]` and scales
/// `[E, rows, cols/32]`, checked (U8, shapes, no NaN scale).
struct hf_mxfp4_tensor {
  checkpoint_tensor blocks, scales;
  index rows = 0, cols = 0;

  /// Writes row `r` of expert e in GGUF's MXFP4 layout (moe::formats::mxfp4: per block the E8M0
  /// byte, then byte j holding element j in its low nibble and element j + 16 in its high
  /// nibble, as ggml's block_mxfp4 and dequantize_row_mxfp4). Hugging Face's layout keeps
  /// element 2i in the low nibble of byte i and 2i + 1 in its high nibble (transformers'
  /// integrations/mxfp4.py convert_moe_packed_tensors, OpenAI's gpt_oss/torch/weights.py
  /// _get_mxfp4_tensor: low nibbles to the even positions, high nibbles to the odd). The codes
  /// need no mapping: both tables give code c the E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6}[c & 7],
  /// negative when c & 8 (FP4_VALUES there; kvalues_mxfp4 in ggml, which holds the doubled
  /// values and multiplies by half the scale); and the scale byte s means 2^(s - 127) in both.
  void row(index e, index r, std::byte* out) const {
    const index nb = cols / 32;
    const std::size_t at = static_cast<std::size_t>(e * rows + r) * static_cast<std::size_t>(nb);
    const auto* src = reinterpret_cast<const std::uint8_t*>(blocks.bytes.data()) + at * 16;
    const auto* sc = reinterpret_cast<const std::uint8_t*>(scales.bytes.data()) + at;
    for (index b = 0; b < nb; ++b, src += 16, out += formats::mxfp4::block_bytes) {
      if (sc[b] == 255) {
        moe::detail::fail_parameter(error_id::input, "moe::io::load_quantized_experts",
                                    moe::detail::concat("tensor '", scales.name, "' [", e, ", ", r, ", ", b, "]"),
                                    "a finite E8M0 scale (0..254)", "255 (NaN)");
      }
      std::uint8_t blk[formats::mxfp4::block_bytes];
      blk[0] = sc[b];
      for (int j = 0; j < 16; ++j) {
        const auto code = [&](int k) { return static_cast<std::uint8_t>((src[k / 2] >> (4 * (k % 2))) & 0x0f); };
        blk[1 + j] = static_cast<std::uint8_t>(code(j) | (code(j + 16) << 4));
      }
      std::memcpy(out, blk, sizeof blk);
    }
  }
  /// Expert e's bytes in the file, blocks and scales, out of the resident set.
  void release(index e) const noexcept {
    const std::size_t per = static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols / 32);
    release_bytes(blocks.bytes.data() + static_cast<std::size_t>(e) * per * 16, per * 16);
    release_bytes(scales.bytes.data() + static_cast<std::size_t>(e) * per, per);
  }
};

inline hf_mxfp4_tensor hf_mxfp4(const checkpoint& ckpt, const std::string& blocks, const std::string& scales, index E,
                                index rows, index cols, index layer) {
  constexpr const char* where = "moe::io::load_quantized_experts";
  for (const auto* name : {&blocks, &scales}) {
    if (!ckpt.has(*name)) fail(moe::detail::concat("gpt-oss layer ", layer, " has no MXFP4 tensor '", *name, "'"));
  }
  hf_mxfp4_tensor t{ckpt.tensor(blocks), ckpt.tensor(scales), rows, cols};
  for (const auto* x : {&t.blocks, &t.scales}) {
    if (x->dtype != "U8") {
      moe::detail::fail_parameter(error_id::input, where, moe::detail::concat("tensor '", x->name, "' dtype"), "U8", x->dtype);
    }
  }
  expect_shape(t.blocks, {u(E), u(rows), u(cols / 32), 16});
  expect_shape(t.scales, {u(E), u(rows), u(cols / 32)});
  return t;
}

/// gpt-oss's routed experts from its Hugging Face MXFP4 tensors (see load_quantized_experts).
template <class Activation>
gated_mlp_experts<formats::mxfp4, Activation> hf_mxfp4_experts(const checkpoint& ckpt, const model_config& cfg, index layer) {
  constexpr const char* where = "moe::io::load_quantized_experts";
  const auto n = tensor_names(ckpt, cfg, layer);
  const auto c = cfg.layer(layer);
  const index E = c.experts, d = c.hidden, f = c.moe_intermediate;
  if (!ckpt.has(n.gate_blocks) && ckpt.has(n.gate)) {
    fail(moe::detail::concat("gpt-oss layer ", layer, "'s experts are dense ('", n.gate,
                             "'), not MXFP4; no bank computes gpt-oss's clamped SwiGLU with biases from dense weights: load "
                             "the published MXFP4 checkpoint (", n.gate_blocks, " and _scales) or a GGUF file, or quantise "
                             "the matrices with gated_mlp_experts<F, act::clamped_swiglu>(gate, up, down) and set_biases()"));
  }
  if (d % 32 != 0) moe::detail::fail_parameter(error_id::shape, where, "hidden_size", "a multiple of 32 (the MXFP4 block)", d);
  if (f % 32 != 0) moe::detail::fail_parameter(error_id::shape, where, "intermediate_size", "a multiple of 32 (the MXFP4 block)", f);
  const auto gu = hf_mxfp4(ckpt, n.gate_blocks, n.gate_scales, E, 2 * f, d, layer);
  const auto dn = hf_mxfp4(ckpt, n.down_blocks, n.down_scales, E, d, f, layer);
  // The biases first: a missing one fails before any packing.
  for (const auto* name : {&n.gate_up_bias, &n.down_bias}) {
    if (!ckpt.has(*name)) fail(moe::detail::concat("gpt-oss layer ", layer, " has no expert bias tensor '", *name, "'"));
  }
  const auto gub = load_matrix(ckpt, n.gate_up_bias, E, 2 * f);  // [E, 2f], gate on the even columns
  const auto db = load_matrix(ckpt, n.down_bias, E, d);           // [E, d]
  std::vector<float> bg(static_cast<std::size_t>(E * f)), bu(bg.size());
  for (index e = 0; e < E; ++e) {
    for (index j = 0; j < f; ++j) {
      bg[static_cast<std::size_t>(e * f + j)] = gub(e, 2 * j);
      bu[static_cast<std::size_t>(e * f + j)] = gub(e, 2 * j + 1);
    }
  }
  // gate|up interleaved on the rows (transformers' GptOssExperts and OpenAI's reference swiglu:
  // gate = gate_up[..., ::2], up = gate_up[..., 1::2]): gate row j is row 2j, up row j is 2j + 1.
  const std::size_t rb_d = formats::row_bytes<formats::mxfp4>(d), rb_f = formats::row_bytes<formats::mxfp4>(f);
  auto bank = gated_mlp_experts<formats::mxfp4, Activation>::from_expert_bytes(
      swiglu_shape{E, d, f}, [&](index e, int m, std::span<std::byte> out) {
        if (m == 2) {
          for (index r = 0; r < d; ++r) dn.row(e, r, out.data() + static_cast<std::size_t>(r) * rb_f);
          dn.release(e);
          return;
        }
        for (index j = 0; j < f; ++j) gu.row(e, 2 * j + m, out.data() + static_cast<std::size_t>(j) * rb_d);
        if (m == 1) gu.release(e);
      });
  bank.set_biases(std::move(bg), std::move(bu), std::vector<float>(db.data(), db.data() + db.size()));
  return bank;
}
}  // namespace detail::checkpoint_impl

/// The routed experts of MoE layer `layer` in their own block format F
/// (moe::gated_mlp_experts<F, Activation>):
///   - from a GGUF file, built from the tensor bytes without re-quantising, with the per-expert
///     biases `ffn_{gate,up,down}_exps.bias` where the file has them (gpt-oss: required);
///   - from gpt-oss's Hugging Face checkpoint as published (F = moe::formats::mxfp4,
///     Activation = act::clamped_swiglu): `experts.gate_up_proj_blocks` / `_scales` and
///     `down_proj_blocks` / `_scales` (moe_tensor_names::gate_blocks ...), converted one expert
///     at a time into GGUF's block layout (nibble order; gate and up de-interleaved from the
///     rows of gate_up_proj, the scales as they are: the values are bit for bit the checkpoint's),
///     with the biases `gate_up_proj_bias` `[E, 2f]` (split the same way) and `down_proj_bias`
///     `[E, d]` (F32, BF16 or F16), all required; each expert's file pages leave the resident
///     set once converted, so the load holds the bank plus one expert's matrix. A checkpoint
///     with dense experts (`gate_up_proj` `[E, d, 2f]`, the BF16 form) is refused: no bank here
///     computes gpt-oss's clamped SwiGLU with biases from dense weights.
/// gpt-oss's experts need Activation = moe::act::clamped_swiglu, and other families' must not
/// use it. Throws moe::error naming the tensor when its type is not F's (U8 for the Hugging Face
/// blocks and scales), a shape differs, a scale is NaN or a tensor is missing.
template <block_format F, class Activation = act::silu>
gated_mlp_experts<F, Activation> load_quantized_experts(const checkpoint& ckpt, const model_config& cfg, index layer) {
  namespace ci = detail::checkpoint_impl;
  constexpr const char* where = "moe::io::load_quantized_experts";
  const bool oss = cfg.model_type == "gpt-oss" || cfg.model_type == "gpt_oss";
  if (!ckpt.is_gguf() && !(oss && std::is_same_v<F, formats::mxfp4>)) {
    ci::fail("quantized experts load from GGUF files, and from gpt-oss's Hugging Face MXFP4 checkpoints (F = moe::formats::mxfp4)");
  }
  if (!cfg.is_moe_layer(layer)) moe::detail::fail_parameter(error_id::config, where, "layer", "a MoE layer of the model", layer);
  if (oss != std::is_same_v<Activation, act::clamped_swiglu>) {
    moe::detail::fail_parameter(error_id::config, where, "Activation", oss ? "act::clamped_swiglu (gpt-oss's experts)" : "not act::clamped_swiglu (gpt-oss's only)",
                                Activation::name);
  }
  if constexpr (std::is_same_v<F, formats::mxfp4>) {
    if (!ckpt.is_gguf()) return ci::hf_mxfp4_experts<Activation>(ckpt, cfg, layer);
  }
  const auto n = gguf_tensor_names(layer);
  const auto c = cfg.layer(layer);
  const index E = c.experts, d = c.hidden, f = c.moe_intermediate;
  const auto get = [&](const std::string& name, std::vector<std::uint64_t> shape) {
    auto t = ckpt.tensor(name);
    ci::expect_shape(t, shape);
    if (t.ggml_type != F::ggml_type) {
      moe::detail::fail_parameter(error_id::input, where, moe::detail::concat("tensor '", name, "' type"), F::name, t.dtype);
    }
    return t.bytes;
  };
  const auto g = get(n.gate, {ci::u(E), ci::u(f), ci::u(d)});
  const auto up = get(n.up, {ci::u(E), ci::u(f), ci::u(d)});
  const auto dn = get(n.down, {ci::u(E), ci::u(d), ci::u(f)});
  gated_mlp_experts<F, Activation> bank(g, up, dn, swiglu_shape{E, d, f});
  const auto bias = [&](const std::string& name, index rows, index cols) {
    if (!ckpt.has(name)) return std::vector<float>{};
    const auto m = load_matrix(ckpt, name, rows, cols);
    return std::vector<float>(m.data(), m.data() + m.size());
  };
  if (oss) {  // gpt-oss's experts always have their three biases
    for (const auto* name : {&n.gate_bias, &n.up_bias, &n.down_bias}) {
      if (!ckpt.has(*name)) ci::fail(moe::detail::concat("gpt-oss layer ", layer, " has no expert bias tensor '", *name, "'"));
    }
  }
  auto bg = bias(n.gate_bias, E, f), bu = bias(n.up_bias, E, f), bd = bias(n.down_bias, E, d);
  if (!bg.empty() || !bu.empty() || !bd.empty()) bank.set_biases(std::move(bg), std::move(bu), std::move(bd));
  return bank;
}

}  // namespace moe::io
