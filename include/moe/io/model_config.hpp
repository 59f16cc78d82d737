// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// A model's MoE description read from its Hugging Face config.json (needs nlohmann-json):
// expert counts, shapes, gating, normalisation, groups, bias, shared experts and which layers are
// MoE layers, with the family rules of each model's reference code for what a config leaves
// implicit. Reading is exact and loud: every alias of a field is read, aliases that disagree are
// an error, a MoE key this reader does not know is an error (never a silent default), and so is
// a family it does not know.
//
// Families: mixtral; qwen2_moe (Qwen1.5/2-MoE), qwen3_moe, qwen3_next; olmoe; deepseek_v3 and
// kimi_k2 (DeepseekV3ForCausalLM); gpt_oss; glm4_moe (GLM-4.5, GLM-4.5-Air); dots1 (dots.llm1);
// llama4 (its text_config) and llama4_text; dbrx (its ffn_config); granitemoe, granitemoeshared;
// phimoe (Phi-3.5-MoE); ernie4_5_moe; hunyuan_v1_moe (Hunyuan-A13B); minimax (MiniMax-Text-01,
// MiniMax-M1), minimax_m2; longcat_flash. Each family's reader cites the reference code whose
// rules and defaults it follows. From a GGUF file's metadata (from_gguf): llama.cpp's
// `<arch>.expert_*` keys, plus what llama.cpp fixes per architecture in its graph code for the
// architectures handled here (gpt-oss's softmax over the selected and router bias, Mixtral's
// (`llama`) renormalisation, Qwen2-MoE's gated shared expert); other architectures' hard-coded
// choices are not known to this reader.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/io/gguf.hpp"
#include "moe/routing/routers/group_limited.hpp"
#include "moe/routing/routers/top_k.hpp"
#include "moe/routing/routers/topk_softmax.hpp"

namespace moe {

/// How router scores and combine weights come from the logits.
enum class model_gating {
  softmax,            ///< softmax over all experts, then top-k (Mixtral, Qwen, OLMoE, DBRX, ERNIE, HunYuan, MiniMax, LongCat)
  sigmoid,            ///< sigmoid scores, top-k (DeepSeek-V3, Kimi K2, GLM-4.5, dots.llm1, MiniMax-M2)
  topk_then_softmax,  ///< top-k of the (biased) logits, softmax over the k (gpt-oss, Granite MoE)
  /// Top-k of the raw logits z; each selected expert's weight is sigmoid(z_e), never renormalised
  /// (Llama 4: Llama4Router scatters the top-k logits into -inf and takes the sigmoid).
  sigmoid_topk,
  /// Phi-3.5-MoE's SparseMixer-v2 at inference (`sparsemixer` in modeling_phimoe.py), for k = 2:
  /// pass 1: m = max_e z_e, e1 = argmax (ties: the lowest id, this library's rule); mask every e with
  /// (m - z_e) / max(|z_e|, m) > 2·jitter_eps to -inf; w1 = softmax over the unmasked z at e1.
  /// Pass 2: z' = z with z'_{e1} = -inf; m' = max z', e2 = argmax z'; mask every e with
  /// (m' - z_e) / max(|z_e|, m') > 2·jitter_eps (z, not z', in the test) and e1; w2 = softmax
  /// over the unmasked z' at e2. No renormalisation: w1 + w2 may differ from 1.
  sparsemixer,
};

/// Routed-expert counts of one layer, for families whose counts vary by layer (HunYuan's
/// list-valued num_experts, moe_topk, num_shared_expert, moe_intermediate_size).
struct model_layer_shape {
  index experts = 0;              ///< E of this layer
  int experts_per_token = 0;      ///< k of this layer
  index moe_intermediate = 0;     ///< f of a routed expert of this layer
  index shared_experts = 0;       ///< shared experts of this layer
  index shared_intermediate = 0;  ///< f of this layer's shared experts (all together)
  friend bool operator==(const model_layer_shape&, const model_layer_shape&) = default;
};

struct model_config {
  std::string model_type;
  index hidden = 0;              ///< d
  index moe_intermediate = 0;    ///< f of a routed expert
  index dense_intermediate = 0;  ///< f of a dense MLP layer (intermediate_size)
  index layers = 0;
  index experts = 0;             ///< E, routed experts per MoE layer
  int experts_per_token = 0;     ///< k
  model_gating gating = model_gating::softmax;
  bool renormalize = false;      ///< divide the selected weights by their sum
  float route_scale = 1.0f;      ///< routed_scaling_factor
  int n_groups = 1;              ///< expert groups (DeepSeek-V3 n_group)
  int topk_groups = 1;
  bool selection_bias = false;   ///< noaux_tc: e_score_correction_bias chooses the experts
  bool router_bias = false;      ///< the router linear has a bias (gpt-oss)
  index shared_experts = 0;      ///< shared experts every token goes through
  index shared_intermediate = 0; ///< f of the shared experts (all together)
  bool shared_gate = false;      ///< a sigmoid gate on the shared experts (Qwen2-MoE, Qwen3-Next)
  std::vector<bool> moe_layer;   ///< [layers]: whether layer l is a MoE layer

  // What the fields above cannot say. Their defaults describe every family that does not set
  // them, so a model that needs none of them reads as before.

  /// With `renormalize`: the selected weights are divided by their p-norm (Σ_sel |w|^p)^(1/p)
  /// (DBRX: torch.norm(top_weights, p = moe_normalize_expert_weights)); 1 is the sum. Gate
  /// weights are >= 0 (softmax, sigmoid), so |w| = w and p = 1 is exactly the sum of the weights.
  float renormalize_p = 1.0f;
  /// With `renormalize`: the divisor is max(norm, renormalize_min) (ERNIE 4.5 moe_norm_min,
  /// HunYuan's torch.finfo(float32).eps); 0: none. Without a selection bias the top-k of a softmax
  /// over E experts sum to >= 1/E and neither family's floor binds; with one (ERNIE's
  /// moe_use_aux_free) the chosen experts may have tiny probabilities, and the floor then matters
  /// (moe::io::with_router passes it as top_k_options::renormalize_floor).
  float renormalize_min = 0.0f;
  /// SparseMixer's ε (`model_gating::sparsemixer`; Phi-3.5 router_jitter_noise). Used at inference.
  float jitter_eps = 0.0f;
  /// Training-time multiplicative noise on the router input, x · U(1 - ε, 1 + ε) (DBRX
  /// moe_jitter_eps, Phi-3.5 input_jitter_noise, MiniMax / Llama 4 router_jitter_noise);
  /// inference does not apply it. Recorded so that a training router can.
  float train_jitter = 0.0f;
  /// The combine weight scales the expert's input instead of its output: y = Σ_e E_e(w_e · x)
  /// (Llama 4: routed_in = hidden_states * router_scores), not Σ_e w_e · E_e(x).
  bool weight_on_input = false;
  /// Zero-computation experts after the routed ones (LongCat-Flash zero_expert_num): the router
  /// scores and selects among experts + identity_experts ids; an id e >= experts is an identity
  /// expert whose output is w_e · x (zero_expert_type "identity"), with no FFN weights.
  index identity_experts = 0;
  /// [layers] when the counts differ between MoE layers (HunYuan's lists), else empty. Then the
  /// scalar counts above hold the largest value over the MoE layers (a bound for buffers), and
  /// `layer(l)` gives layer l's counts; `top_k()`, `group_limited()` and `topk_softmax()` refuse.
  std::vector<model_layer_shape> layer_shapes;

  /// This config with layer l's counts in the scalar fields (a copy of *this when the counts are
  /// the same in every layer).
  [[nodiscard]] model_config layer(index l) const {
    if (l < 0 || l >= layers) detail::fail_parameter(error_id::config, "moe::model_config::layer", "l", detail::concat("in [0, ", layers - 1, "]"), l);
    model_config c = *this;
    if (layer_shapes.empty()) return c;
    const model_layer_shape& s = layer_shapes[static_cast<std::size_t>(l)];
    c.experts = s.experts;
    c.experts_per_token = s.experts_per_token;
    c.moe_intermediate = s.moe_intermediate;
    c.shared_experts = s.shared_experts;
    c.shared_intermediate = s.shared_intermediate;
    c.layer_shapes.clear();
    return c;
  }

  [[nodiscard]] bool is_moe_layer(index l) const { return l >= 0 && l < layers && moe_layer[static_cast<std::size_t>(l)]; }

  /// Options of moe::top_k for the softmax families. Throws for other gatings.
  [[nodiscard]] top_k_options top_k() const {
    if (gating != model_gating::softmax || n_groups != 1 || selection_bias) {
      fail("top_k()", "a softmax top-k router (this model routes otherwise: use group_limited() or topk_softmax())");
    }
    check_router_fields("top_k()");
    return {.k = experts_per_token, .renormalize = renormalize, .route_scale = route_scale};
  }
  /// Options of moe::group_limited<moe::sigmoid_gate> for DeepSeek-V3-style routing.
  [[nodiscard]] group_limited_options group_limited() const {
    if (gating != model_gating::sigmoid) fail("group_limited()", "sigmoid gating (DeepSeek-V3 family)");
    check_router_fields("group_limited()");
    return {.k = experts_per_token, .n_groups = n_groups, .topk_groups = topk_groups, .renormalize = renormalize,
            .route_scale = route_scale};
  }

  /// Options of moe::topk_softmax for gpt-oss (the router bias is a checkpoint tensor:
  /// `mlp.router.bias`, GGUF `ffn_gate_inp.bias`; pass it as `logit_bias`).
  [[nodiscard]] topk_softmax_options topk_softmax() const {
    if (gating != model_gating::topk_then_softmax) fail("topk_softmax()", "top-k then softmax gating (gpt-oss)");
    check_router_fields("topk_softmax()");
    return {.k = experts_per_token};
  }

  /// Checks the ranges of every count (a config or a file's metadata is input): throws
  /// moe::error naming the field. Both readers call it before using the counts.
  /// `names`: the fields as the source calls them (layers, hidden, experts, k, expert width,
  /// shared experts, groups, groups per token).
  /// `selectable`: the ids k is chosen from when more than `experts` (LongCat's identity experts).
  static void check_counts(std::string_view where, const std::array<std::string, 8>& names, index layers, index hidden,
                           index experts, index k, index moe_f, index shared, index groups, index topk_groups,
                           index selectable = 0) {
    const auto in = [&](int i, index v, index lo, index hi) {
      if (v < lo || v > hi) detail::fail_parameter(error_id::config, where, names[static_cast<std::size_t>(i)], detail::concat("in [", lo, ", ", hi, "]"), v);
    };
    in(0, layers, 1, index{1} << 20);
    in(1, hidden, 1, index{1} << 24);
    in(2, experts, 1, index{1} << 20);
    in(3, k, 1, std::max(experts, selectable));
    in(4, moe_f, 1, index{1} << 24);
    in(5, shared, 0, index{1} << 10);
    in(6, groups, 1, experts);
    if (experts % groups != 0) {
      detail::fail_parameter(error_id::config, where, names[6], detail::concat("a divisor of ", experts), groups);
    }
    in(7, topk_groups, 1, groups);
  }

  /// Reads a config.json.
  static model_config from_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) detail::throw_error(error_id::input, detail::concat("moe::model_config: cannot open '", path, "'"));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(in);
    } catch (const nlohmann::json::exception& e) {
      detail::throw_error(error_id::input, detail::concat("moe::model_config: '", path, "' is not valid JSON: ", e.what()));
    }
    return from_json(j);
  }

  /// Reads the MoE keys of a GGUF file's metadata (llama.cpp's names, `<arch>` =
  /// general.architecture): block_count, embedding_length, expert_count, expert_used_count,
  /// expert_feed_forward_length (else feed_forward_length), and when present
  /// expert_gating_func (1 softmax, 2 sigmoid, 3 softmax over the selected), expert_weights_norm, expert_weights_scale,
  /// expert_shared_count, expert_shared_feed_forward_length, leading_dense_block_count,
  /// expert_group_count and expert_group_used_count. A missing required key or an unknown
  /// `<arch>.expert_*` key is an error.
  static model_config from_gguf(const io::gguf_file& f) {
    model_config c;
    const std::string arch = f.get_string("general.architecture");
    c.model_type = arch;
    const auto key = [&](const char* k) { return arch + "." + k; };
    const auto opt_int = [&](const char* k, index fallback) { return f.find(key(k)) ? static_cast<index>(f.get_int(key(k))) : fallback; };
    static const std::set<std::string> known = {"expert_count", "expert_used_count", "expert_feed_forward_length",
                                                "expert_gating_func", "expert_weights_norm", "expert_weights_scale",
                                                "expert_shared_count", "expert_shared_feed_forward_length",
                                                "expert_group_count", "expert_group_used_count"};
    for (const auto& [k, v] : f.metadata()) {
      if (k.rfind(arch + ".expert_", 0) == 0 && !known.count(k.substr(arch.size() + 1))) {
        detail::fail_parameter(error_id::config, "moe::model_config::from_gguf", k, "a MoE key this reader knows", "an unknown key");
      }
    }
    c.layers = static_cast<index>(f.get_int(key("block_count")));
    c.hidden = static_cast<index>(f.get_int(key("embedding_length")));
    c.experts = static_cast<index>(f.get_int(key("expert_count")));
    const index k = static_cast<index>(f.get_int(key("expert_used_count")));
    c.dense_intermediate = opt_int("feed_forward_length", 0);
    c.moe_intermediate = opt_int("expert_feed_forward_length", c.dense_intermediate);
    const index groups = opt_int("expert_group_count", 1), topk_groups = opt_int("expert_group_used_count", 1);
    const bool qwen2 = arch == "qwen2moe";
    const index shared = f.find(key("expert_shared_count")) ? opt_int("expert_shared_count", 0)
                         : qwen2 && f.find(key("expert_shared_feed_forward_length")) ? 1 : 0;
    check_counts("moe::model_config::from_gguf",
                 {key("block_count"), key("embedding_length"), key("expert_count"), key("expert_used_count"),
                  key("expert_feed_forward_length"), key("expert_shared_count"), key("expert_group_count"),
                  key("expert_group_used_count")},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, shared, groups, topk_groups);
    c.experts_per_token = static_cast<int>(k);
    c.n_groups = static_cast<int>(groups);
    c.topk_groups = static_cast<int>(topk_groups);
    c.shared_experts = shared;
    const index gating = opt_int("expert_gating_func", 1);
    if (gating < 1 || gating > 3) {
      detail::fail_parameter(error_id::config, "moe::model_config::from_gguf", key("expert_gating_func"),
                             "1 (softmax), 2 (sigmoid) or 3 (softmax over the selected, gpt-oss)", gating);
    }
    c.gating = gating == 2 ? model_gating::sigmoid : gating == 3 ? model_gating::topk_then_softmax : model_gating::softmax;
    // What llama.cpp fixes per architecture in its graph rather than in the metadata.
    if (arch == "gpt-oss") c.gating = model_gating::topk_then_softmax;
    c.router_bias = c.gating == model_gating::topk_then_softmax;
    c.renormalize = f.find(key("expert_weights_norm")) ? f.get_bool(key("expert_weights_norm")) : arch == "llama";  // Mixtral
    c.route_scale = f.find(key("expert_weights_scale")) ? static_cast<float>(f.get_float(key("expert_weights_scale"))) : 1.0f;
    if (!(c.route_scale > 0.0f) || !std::isfinite(c.route_scale)) {
      detail::fail_parameter(error_id::config, "moe::model_config::from_gguf", key("expert_weights_scale"), "finite and > 0", c.route_scale);
    }
    c.shared_intermediate = c.shared_experts > 0 ? opt_int("expert_shared_feed_forward_length", c.shared_experts * c.moe_intermediate) : 0;
    c.shared_gate = qwen2 && c.shared_experts > 0;  // Qwen2-MoE's ffn_gate_inp_shexp
    const index dense = opt_int("leading_dense_block_count", 0);
    c.moe_layer.assign(static_cast<std::size_t>(std::max<index>(c.layers, 0)), true);
    for (index l = 0; l < c.layers && l < dense; ++l) c.moe_layer[static_cast<std::size_t>(l)] = false;
    return c;
  }

  /// Reads a parsed config.json.
  static model_config from_json(const nlohmann::json& j) {
    if (!j.is_object()) detail::throw_error(error_id::input, "moe::model_config: a config must be a JSON object");
    const std::string t = str(j, "model_type");
    static const std::set<std::string> classic = {"mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe",
                                                  "deepseek_v3", "kimi_k2", "gpt_oss"};
    if (classic.count(t)) return read_classic(j);
    if (t == "glm4_moe" || t == "dots1") return read_glm4_dots1(j, t);
    if (t == "llama4" || t == "llama4_text") return read_llama4(j, t);
    if (t == "dbrx") return read_dbrx(j);
    if (t == "granitemoe" || t == "granitemoeshared") return read_granite(j, t);
    if (t == "phimoe") return read_phimoe(j);
    if (t == "ernie4_5_moe") return read_ernie(j);
    if (t == "hunyuan_v1_moe") return read_hunyuan(j);
    if (t == "minimax" || t == "minimax_m2") return read_minimax(j, t);
    if (t == "longcat_flash") return read_longcat(j);
    detail::fail_parameter(error_id::config, "moe::model_config", "model_type",
                           "one of mixtral, qwen2_moe, qwen3_moe, qwen3_next, olmoe, deepseek_v3, kimi_k2, gpt_oss, "
                           "glm4_moe, dots1, llama4, llama4_text, dbrx, granitemoe, granitemoeshared, phimoe, "
                           "ernie4_5_moe, hunyuan_v1_moe, minimax, minimax_m2, longcat_flash",
                           t);
  }

 private:
  // The families read since the first version, with one set of known MoE keys.
  static model_config read_classic(const nlohmann::json& j) {
    model_config c;
    c.model_type = str(j, "model_type");
    const auto& t = c.model_type;
    check_known_keys(j);
    c.hidden = integer(j, {"hidden_size"});
    c.layers = integer(j, {"num_hidden_layers"});
    c.dense_intermediate = optional_integer(j, {"intermediate_size"}, 0);
    const bool deepseek = t == "deepseek_v3" || t == "kimi_k2";
    const bool qwen = t == "qwen2_moe" || t == "qwen3_moe" || t == "qwen3_next";
    // DeepseekV3Config's class defaults fill what a DeepSeek-V3 / Kimi K2 config omits.
    c.experts = deepseek ? optional_integer(j, {"n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts"}, 256)
                         : integer(j, {"num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts"});
    const index k = deepseek ? optional_integer(j, {"num_experts_per_tok", "experts_per_token", "moe_topk"}, 8)
                             : integer(j, {"num_experts_per_tok", "experts_per_token", "moe_topk"});
    c.moe_intermediate = optional_integer(j, {"moe_intermediate_size"}, deepseek ? 2048 : c.dense_intermediate);
    const index groups = deepseek ? optional_integer(j, {"n_group"}, 8) : 1;
    const index topk_groups = deepseek ? optional_integer(j, {"topk_group"}, 4) : 1;
    const index shared = deepseek ? optional_integer(j, {"n_shared_experts"}, 1)
                                  : (qwen && optional_integer(j, {"shared_expert_intermediate_size"}, 0) > 0 ? 1 : 0);
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
                  "n_shared_experts", "n_group", "topk_group"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, shared, groups, topk_groups);
    c.experts_per_token = static_cast<int>(k);
    c.n_groups = static_cast<int>(groups);
    c.topk_groups = static_cast<int>(topk_groups);
    c.shared_experts = shared;
    c.moe_layer.assign(static_cast<std::size_t>(c.layers), true);
    if (t == "mixtral") {
      c.renormalize = true;  // MixtralSparseMoeBlock: routing_weights /= routing_weights.sum(-1)
    } else if (t == "olmoe" || qwen) {
      c.renormalize = boolean(j, "norm_topk_prob", t == "qwen3_next");  // OLMoE and Qwen2-MoE default false
    } else if (deepseek) {
      const auto scoring = optional_str(j, "scoring_func", "sigmoid");
      if (scoring == "sigmoid") {
        c.gating = model_gating::sigmoid;
      } else if (scoring != "softmax") {
        detail::fail_parameter(error_id::config, "moe::model_config", "scoring_func", "sigmoid or softmax", scoring);
      }
      const auto method = optional_str(j, "topk_method", "noaux_tc");
      if (method == "noaux_tc") {
        c.selection_bias = true;
      } else if (method != "greedy" && method != "group_limited_greedy") {
        detail::fail_parameter(error_id::config, "moe::model_config", "topk_method", "noaux_tc, greedy or group_limited_greedy", method);
      }
      c.renormalize = boolean(j, "norm_topk_prob", true);
      c.route_scale = static_cast<float>(number(j, "routed_scaling_factor", 2.5));
      if (!(c.route_scale > 0.0f) || !std::isfinite(c.route_scale)) {
        detail::fail_parameter(error_id::config, "moe::model_config", "routed_scaling_factor", "finite and > 0", c.route_scale);
      }
      c.shared_intermediate = c.shared_experts * c.moe_intermediate;
      const index first_dense = optional_integer(j, {"first_k_dense_replace"}, 3);
      const index freq = optional_integer(j, {"moe_layer_freq"}, 1);
      if (freq < 1) detail::fail_parameter(error_id::config, "moe::model_config", "moe_layer_freq", ">= 1", freq);
      for (index l = 0; l < c.layers; ++l) c.moe_layer[static_cast<std::size_t>(l)] = l >= first_dense && l % freq == 0;
    } else if (t == "gpt_oss") {
      c.gating = model_gating::topk_then_softmax;
      c.router_bias = true;  // GptOssTopKRouter: nn.Linear with bias; softmax over the top-k logits
    }
    if (qwen) {
      c.shared_intermediate = optional_integer(j, {"shared_expert_intermediate_size"}, 0);
      if (c.shared_intermediate < 0 || c.shared_intermediate > (index{1} << 24)) {
        detail::fail_parameter(error_id::config, "moe::model_config", "shared_expert_intermediate_size", "in [0, 2^24]", c.shared_intermediate);
      }
      c.shared_gate = c.shared_experts > 0;  // shared_expert_gate: Linear(d, 1), sigmoid
      const index step = optional_integer(j, {"decoder_sparse_step"}, 1);
      if (step < 1) detail::fail_parameter(error_id::config, "moe::model_config", "decoder_sparse_step", ">= 1", step);
      std::vector<index> dense_only;
      if (j.contains("mlp_only_layers")) {
        if (!j["mlp_only_layers"].is_array()) detail::fail_parameter(error_id::config, "moe::model_config", "mlp_only_layers", "an array", "not an array");
        for (const auto& v : j["mlp_only_layers"]) {
          if (!v.is_number_integer()) detail::fail_parameter(error_id::config, "moe::model_config", "mlp_only_layers", "layer indices", v.type_name());
          dense_only.push_back(v.get<index>());
        }
      }
      for (index l = 0; l < c.layers; ++l) {
        const bool listed = std::find(dense_only.begin(), dense_only.end(), l) != dense_only.end();
        c.moe_layer[static_cast<std::size_t>(l)] = !listed && c.experts > 0 && (l + 1) % step == 0;
      }
    }
    return c;
  }

  // What top_k(), group_limited() and topk_softmax() cannot carry: refused rather than dropped.
  void check_router_fields(const char* what) const {
    if (!layer_shapes.empty()) fail(what, "the same counts in every MoE layer (they differ per layer: use layer(l) first)");
    if (identity_experts > 0) fail(what, "no identity experts (LongCat-Flash's zero-computation experts are routed too)");
    if (weight_on_input) fail(what, "the weight on the expert's output (this model weighs the expert's input)");
    if (renormalize && renormalize_p != 1.0f) fail(what, "renormalisation by the sum (this model divides by a p-norm, p != 1)");
    if (renormalize && renormalize_min > 0.0f && gating != model_gating::softmax) {
      fail(what, "no floor on the renormalisation divisor");
    }
  }

  static void set_counts(model_config& c, index k, index groups, index topk_groups, index shared) {
    c.experts_per_token = static_cast<int>(k);
    c.n_groups = static_cast<int>(groups);
    c.topk_groups = static_cast<int>(topk_groups);
    c.shared_experts = shared;
    c.moe_layer.assign(static_cast<std::size_t>(c.layers), true);
  }

  // GLM-4.5 / GLM-4.5-Air (Glm4MoeConfig; Glm4MoeTopkRouter and Glm4MoeMoE in
  // modeling_glm4_moe.py) and dots.llm1 (Dots1Config; Dots1TopkRouter and Dots1MoE are
  // DeepseekV3TopkRouter and DeepseekV3MoE in modular_dots1.py). Both route as DeepSeek-V3's
  // noaux_tc, always: sigmoid scores, experts chosen by score + e_score_correction_bias within the
  // topk_group best of n_group groups, weighed by the unbiased scores, renormalised when
  // norm_topk_prob, times routed_scaling_factor; shared experts of n_shared_experts ·
  // moe_intermediate_size; layers from first_k_dense_replace on are MoE layers. Defaults are the
  // config classes' (Dots1Config has none for the counts: they are required).
  static model_config read_glm4_dots1(const nlohmann::json& j, const std::string& t) {
    const section s{j, ""};
    const bool glm = t == "glm4_moe";
    check_family_keys(s, {"n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts", "num_experts_per_tok",
                          "experts_per_token", "moe_topk", "n_shared_experts", "moe_intermediate_size", "n_group",
                          "topk_group", "routed_scaling_factor", "norm_topk_prob", "first_k_dense_replace", "moe_layer_freq",
                          "scoring_func", "topk_method", "output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = t;
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, 10944);  // both classes' default
    const auto e_names = {"n_routed_experts", "num_local_experts", "num_experts", "moe_num_experts"};
    const auto k_names = {"num_experts_per_tok", "experts_per_token", "moe_topk"};
    c.experts = glm ? s.optional_integer(e_names, 128) : s.integer(e_names);
    const index k = glm ? s.optional_integer(k_names, 8) : s.integer(k_names);
    c.moe_intermediate = s.optional_integer({"moe_intermediate_size"}, 1408);
    const index shared = glm ? s.optional_integer({"n_shared_experts"}, 1) : s.integer({"n_shared_experts"});
    const index groups = s.optional_integer({"n_group"}, 1), topk_groups = s.optional_integer({"topk_group"}, 1);
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
                  "n_shared_experts", "n_group", "topk_group"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, shared, groups, topk_groups);
    check_width(s, "intermediate_size", c.dense_intermediate);
    set_counts(c, k, groups, topk_groups, shared);
    // The references hard-code the scoring; a config may still name it (dots.llm1's says
    // "noaux_tc", the name of the selection method, where DeepSeek-V3's says "sigmoid").
    if (glm) {
      (void)s.one_of("scoring_func", "sigmoid", {"sigmoid"});
    } else {
      (void)s.one_of("scoring_func", "sigmoid", {"sigmoid", "noaux_tc"});
    }
    (void)s.one_of("topk_method", "noaux_tc", {"noaux_tc"});
    c.gating = model_gating::sigmoid;
    c.selection_bias = true;
    c.renormalize = s.boolean("norm_topk_prob", glm);
    c.route_scale = s.positive("routed_scaling_factor", 1.0);
    c.shared_intermediate = c.shared_experts * c.moe_intermediate;
    const index first_dense = s.bounded({"first_k_dense_replace"}, glm ? 1 : 0, 0, c.layers);
    // The decoder layers (DeepseekV3DecoderLayer's rule) ignore moe_layer_freq: only 1 agrees.
    (void)s.bounded({"moe_layer_freq"}, 1, 1, 1);
    for (index l = 0; l < c.layers; ++l) c.moe_layer[static_cast<std::size_t>(l)] = l >= first_dense;
    return c;
  }

  // Llama 4 (Llama4TextConfig; Llama4Router and Llama4TextMoe in modeling_llama4.py): the top-k
  // router logits z_e (num_experts_per_tok, 1 in Scout and Maverick) give weights sigmoid(z_e),
  // the others 0; each routed expert runs on sigmoid(z_e) · x and its output is added as it is;
  // one shared expert of intermediate_size runs beside them; dense layers use
  // intermediate_size_mlp. MoE layers: moe_layers, else every interleave_moe_layer_step-th layer
  // (l = step - 1, 2·step - 1, ...). Llama4ForConditionalGeneration (model_type llama4) keeps all
  // of it in text_config (model_type llama4_text).
  static model_config read_llama4(const nlohmann::json& j, const std::string& t) {
    const nlohmann::json* text = &j;
    std::string prefix;
    if (t == "llama4") {
      check_family_keys(section{j, ""}, {});  // the MoE keys live in text_config
      if (!j.contains("text_config") || !j["text_config"].is_object()) {
        detail::fail_parameter(error_id::config, "moe::model_config", "text_config", "an object",
                               j.contains("text_config") ? j["text_config"].type_name() : "missing");
      }
      text = &j["text_config"];
      prefix = "text_config.";
      (void)section{*text, prefix}.one_of("model_type", "llama4_text", {"llama4_text"});
    }
    const section s{*text, prefix};
    check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                          "experts_per_token", "moe_topk", "interleave_moe_layer_step", "moe_layers", "output_router_logits",
                          "router_aux_loss_coef", "router_jitter_noise"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = t;
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.experts = s.optional_integer({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}, 16);
    const index k = s.optional_integer({"num_experts_per_tok", "experts_per_token", "moe_topk"}, 1);
    c.moe_intermediate = s.optional_integer({"intermediate_size"}, 8192);
    c.dense_intermediate = s.optional_integer({"intermediate_size_mlp"}, 16384);
    check_counts("moe::model_config",
                 {s.name("num_hidden_layers"), s.name("hidden_size"), s.name("num_local_experts"),
                  s.name("num_experts_per_tok"), s.name("intermediate_size"), "shared experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, 1, 1, 1);
    check_width(s, "intermediate_size_mlp", c.dense_intermediate);
    set_counts(c, k, 1, 1, 1);
    c.gating = model_gating::sigmoid_topk;
    c.weight_on_input = true;
    c.shared_intermediate = c.moe_intermediate;  // Llama4TextMLP(config): intermediate_size
    c.train_jitter = s.non_negative("router_jitter_noise", 0.0);
    const index step = s.bounded({"interleave_moe_layer_step"}, 1, 1, c.layers);
    for (index l = 0; l < c.layers; ++l) c.moe_layer[static_cast<std::size_t>(l)] = (l + 1) % step == 0;
    if (s.has("moe_layers")) {
      const auto& list = s.j["moe_layers"];
      if (!list.is_array()) s.fail("moe_layers", "a list of layer indices", list.type_name());
      std::vector<bool> listed(static_cast<std::size_t>(c.layers), false);
      for (const auto& v : list) {
        if (!v.is_number_integer()) s.fail("moe_layers", "a list of layer indices", detail::concat("an entry of type ", v.type_name()));
        const auto l = v.get<index>();
        if (l < 0 || l >= c.layers) s.fail("moe_layers", detail::concat("layer indices in [0, ", c.layers - 1, "]"), l);
        listed[static_cast<std::size_t>(l)] = true;
      }
      // Llama4TextConfig ignores the step when moe_layers is given: both present must agree.
      if (s.has("interleave_moe_layer_step") && listed != c.moe_layer) {
        s.fail("moe_layers", detail::concat("the layers that interleave_moe_layer_step = ", step, " gives (they must agree)"),
               "other layers");
      }
      c.moe_layer = listed;
    }
    return c;
  }

  // DBRX (DbrxConfig and DbrxFFNConfig in configuration_dbrx.py, DbrxRouter in modeling_dbrx.py):
  // softmax over the experts, top moe_top_k, the k weights divided by their p-norm
  // torch.norm(w, p = moe_normalize_expert_weights) (null: not divided); moe_jitter_eps scales
  // the router input by U(1 - ε, 1 + ε) in training only. Every layer is a MoE layer, with no
  // shared expert. DbrxFFNConfig refuses keys it does not know, and so does this reader.
  static model_config read_dbrx(const nlohmann::json& j) {
    const section s{j, ""};
    check_family_keys(s, {"output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = "dbrx";
    c.hidden = s.integer({"d_model"});
    c.layers = s.integer({"n_layers"});
    static const nlohmann::json none = nlohmann::json::object();  // DbrxFFNConfig() when absent
    const nlohmann::json* ffn = &none;
    if (s.has("ffn_config")) {
      if (!j["ffn_config"].is_object()) s.fail("ffn_config", "an object", j["ffn_config"].type_name());
      ffn = &j["ffn_config"];
    }
    const section f{*ffn, "ffn_config."};
    static const std::set<std::string> ffn_keys = {
        "ffn_act_fn", "ffn_hidden_size", "moe_num_experts", "moe_top_k", "moe_jitter_eps", "moe_loss_weight",
        "moe_normalize_expert_weights", "uniform_expert_assignment", "model_type", "attn_implementation",
        "transformers_version", "_commit_hash", "torch_dtype", "dtype"};
    for (const auto& item : ffn->items()) {
      if (!ffn_keys.count(item.key())) f.fail(item.key(), "a key DbrxFFNConfig knows", "an unknown key");
    }
    c.experts = f.optional_integer({"moe_num_experts"}, 4);
    const index k = f.optional_integer({"moe_top_k"}, 1);
    c.moe_intermediate = f.optional_integer({"ffn_hidden_size"}, 3584);
    check_counts("moe::model_config",
                 {"n_layers", "d_model", "ffn_config.moe_num_experts", "ffn_config.moe_top_k", "ffn_config.ffn_hidden_size",
                  "shared experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, 0, 1, 1);
    set_counts(c, k, 1, 1, 0);
    c.gating = model_gating::softmax;
    if (ffn->contains("moe_normalize_expert_weights") && (*ffn)["moe_normalize_expert_weights"].is_null()) {
      c.renormalize = false;  // top_weights_scale = 1.0
    } else {
      c.renormalize = true;
      c.renormalize_p = f.positive("moe_normalize_expert_weights", 1.0);
    }
    c.train_jitter = f.non_negative("moe_jitter_eps", 0.0);
    training_only(f, {"moe_loss_weight"});
    if (f.boolean("uniform_expert_assignment", false)) {
      f.fail("uniform_expert_assignment", "false (uniform assignment replaces the router: a benchmarking mode)", "true");
    }
    if (f.has("ffn_act_fn") && !(*ffn)["ffn_act_fn"].is_object()) f.fail("ffn_act_fn", "an object", (*ffn)["ffn_act_fn"].type_name());
    return c;
  }

  // Granite MoE (GraniteMoeConfig; GraniteMoeTopKGating in modeling_granitemoe.py): top-k of the
  // router logits (no bias), softmax over the k; every layer is MoE, experts of intermediate_size.
  // GraniteMoeShared (modeling_granitemoeshared.py) adds one ungated shared MLP of
  // shared_intermediate_size to every layer when that is > 0.
  static model_config read_granite(const nlohmann::json& j, const std::string& t) {
    const section s{j, ""};
    const bool shared_variant = t == "granitemoeshared";
    if (shared_variant) {
      check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                            "experts_per_token", "moe_topk", "output_router_logits", "router_aux_loss_coef",
                            "shared_intermediate_size"});
    } else {
      check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                            "experts_per_token", "moe_topk", "output_router_logits", "router_aux_loss_coef"});
    }
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = t;
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.experts = s.optional_integer({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}, 8);
    const index k = s.optional_integer({"num_experts_per_tok", "experts_per_token", "moe_topk"}, 2);
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, 11008);
    c.moe_intermediate = c.dense_intermediate;
    const index shared_f = shared_variant ? s.bounded({"shared_intermediate_size"}, 0, 0, index{1} << 24) : 0;
    const index shared = shared_f > 0 ? 1 : 0;
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "num_local_experts", "num_experts_per_tok", "intermediate_size",
                  "shared experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, shared, 1, 1);
    set_counts(c, k, 1, 1, shared);
    c.gating = model_gating::topk_then_softmax;
    c.shared_intermediate = shared_f;
    return c;
  }

  // Phi-3.5-MoE (PhimoeConfig; sparsemixer and PhimoeSparseMoeBlock in modeling_phimoe.py):
  // SparseMixer routing, written for two experts (see model_gating::sparsemixer), with
  // ε = router_jitter_noise also at inference; input_jitter_noise scales the input in training
  // only. Every layer is MoE, experts of intermediate_size, no shared expert.
  static model_config read_phimoe(const nlohmann::json& j) {
    const section s{j, ""};
    check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                          "experts_per_token", "moe_topk", "router_jitter_noise", "input_jitter_noise",
                          "output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = "phimoe";
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.experts = s.optional_integer({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}, 16);
    const index k = s.optional_integer({"num_experts_per_tok", "experts_per_token", "moe_topk"}, 2);
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, 6400);
    c.moe_intermediate = c.dense_intermediate;
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "num_local_experts", "num_experts_per_tok", "intermediate_size",
                  "shared experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, 0, 1, 1);
    if (k != 2) s.fail("num_experts_per_tok", "2 (SparseMixer selects exactly two experts)", k);
    set_counts(c, k, 1, 1, 0);
    c.gating = model_gating::sparsemixer;
    c.jitter_eps = s.non_negative("router_jitter_noise", 0.01);
    c.train_jitter = s.non_negative("input_jitter_noise", 0.0);
    return c;
  }

  // ERNIE 4.5 MoE (Ernie4_5_MoeConfig; Ernie4_5_MoeTopKRouter, Ernie4_5_MoeSparseMoeBlock and
  // Ernie4_5_MoeDecoderLayer in modeling_ernie4_5_moe.py): softmax over the experts, experts
  // chosen by softmax + e_score_correction_bias (moe_statics), weighed by the unbiased softmax,
  // divided by max(sum, moe_norm_min); shared experts of moe_num_shared_experts ·
  // moe_intermediate_size; layer l is MoE when (l + 1) % moe_layer_interval == 0 and
  // moe_layer_start_index <= l <= moe_layer_end_index (-1: the last layer). Baidu's own modeling
  // file applies the bias only with moe_use_aux_free (transformers always does; default true).
  static model_config read_ernie(const nlohmann::json& j) {
    const section s{j, ""};
    check_family_keys(s, {"moe_num_experts", "num_experts", "num_local_experts", "n_routed_experts", "moe_k",
                          "num_experts_per_tok", "experts_per_token", "moe_topk", "moe_intermediate_size",
                          "moe_num_shared_experts", "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval",
                          "moe_norm_min", "moe_use_aux_free", "moe_gate", "moe_gate_act", "moe_capacity",
                          "output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = "ernie4_5_moe";
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, 12288);
    c.experts = s.optional_integer({"moe_num_experts", "num_experts", "num_local_experts", "n_routed_experts"}, 64);
    const index k = s.optional_integer({"moe_k", "num_experts_per_tok", "experts_per_token", "moe_topk"}, 6);
    c.moe_intermediate = s.optional_integer({"moe_intermediate_size"}, 1536);
    const index shared = s.optional_integer({"moe_num_shared_experts"}, 2);
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "moe_num_experts", "moe_k", "moe_intermediate_size",
                  "moe_num_shared_experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, shared, 1, 1);
    check_width(s, "intermediate_size", c.dense_intermediate);
    set_counts(c, k, 1, 1, shared);
    c.gating = model_gating::softmax;
    c.selection_bias = s.boolean("moe_use_aux_free", true);
    c.renormalize = true;
    c.renormalize_min = s.non_negative("moe_norm_min", 1e-12);
    c.shared_intermediate = shared * c.moe_intermediate;
    (void)s.one_of("moe_gate", "topk", {"topk"});
    (void)s.one_of("moe_gate_act", "softmax", {"softmax"});
    if (s.has("moe_capacity")) {  // token capacities of Baidu's training code; no token is dropped at inference
      const auto& cap = j["moe_capacity"];
      if (!cap.is_array()) s.fail("moe_capacity", "a list of numbers", cap.type_name());
      for (const auto& v : cap) {
        if (!v.is_number()) s.fail("moe_capacity", "a list of numbers", detail::concat("an entry of type ", v.type_name()));
      }
    }
    const index start = s.bounded({"moe_layer_start_index"}, 1, 0, c.layers);
    index end = s.bounded({"moe_layer_end_index"}, -1, -1, c.layers - 1);
    if (end == -1) end = c.layers - 1;
    const index interval = s.bounded({"moe_layer_interval"}, 1, 1, c.layers);
    for (index l = 0; l < c.layers; ++l) {
      c.moe_layer[static_cast<std::size_t>(l)] = (l + 1) % interval == 0 && l >= start && l <= end;
    }
    return c;
  }

  // HunYuan MoE (Hunyuan-A13B; HunYuanMoEV1Config, HunYuanTopKGate / topkgating and HunYuanMoE
  // in modeling_hunyuan_v1_moe.py, and the model's own HunYuanMoE as vLLM's hunyuan_v1.py runs
  // it): softmax over the experts, top moe_topk, divided by max(sum, FLT_EPSILON); with
  // use_mixed_mlp_moe a shared MLP of num_shared_expert · intermediate_size beside the routed
  // experts of moe_intermediate_size (default intermediate_size); every layer is MoE. num_experts,
  // moe_topk, num_shared_expert and moe_intermediate_size are an int or a list per layer
  // (see layer_shapes). transformers' topkgating also caps each expert at max(k, k·T / E) tokens
  // of a batch, which the model's own code and vLLM do not: not described here.
  static model_config read_hunyuan(const nlohmann::json& j) {
    const section s{j, ""};
    check_family_keys(s, {"num_experts", "moe_topk", "num_shared_expert", "moe_intermediate_size", "use_mixed_mlp_moe",
                          "moe_drop_tokens", "moe_random_routing_dropped_token", "capacity_factor", "moe_layer_num_skipped",
                          "routed_scaling_factor", "group_limited_greedy", "output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits", "capacity_factor"});
    model_config c;
    c.model_type = "hunyuan_v1_moe";
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, 11008);
    if (c.layers < 1 || c.layers > (index{1} << 20)) s.fail("num_hidden_layers", "in [1, 1048576]", c.layers);
    check_width(s, "intermediate_size", c.dense_intermediate);
    const bool mixed = s.boolean("use_mixed_mlp_moe", false);
    const auto experts = s.per_layer("num_experts", c.layers, index{1});
    const auto ks = s.per_layer("moe_topk", c.layers, index{1});
    const auto fs = s.per_layer("moe_intermediate_size", c.layers, c.dense_intermediate);
    const auto shared = mixed ? s.per_layer("num_shared_expert", c.layers, std::nullopt) : std::vector<index>(static_cast<std::size_t>(c.layers), 0);
    if (s.boolean("moe_drop_tokens", false)) s.fail("moe_drop_tokens", "false (dropping tokens over capacity is not described)", "true");
    if (s.boolean("moe_random_routing_dropped_token", false)) {
      s.fail("moe_random_routing_dropped_token", "false (random routing of dropped tokens is not described)", "true");
    }
    (void)s.bounded({"moe_layer_num_skipped"}, 0, 0, 0);  // the references disagree on what a skipped layer is
    // Keys HunYuan-Large's configs carry that neither reference applies: only their neutral values.
    if (s.positive("routed_scaling_factor", 1.0) != 1.0f) s.fail("routed_scaling_factor", "1 (the HunYuan references apply no scale)", s.number("routed_scaling_factor", 1.0));
    if (s.boolean("group_limited_greedy", false)) s.fail("group_limited_greedy", "false (the HunYuan references do not limit groups)", "true");
    std::vector<model_layer_shape> shapes;
    for (index l = 0; l < c.layers; ++l) {
      const auto at = [&](const char* key, bool list) { return list ? detail::concat(key, "[", l, "]") : std::string(key); };
      const auto li = static_cast<std::size_t>(l);
      const auto list = [&](const char* key) { return s.has(key) && j[key].is_array(); };
      check_counts("moe::model_config",
                   {"num_hidden_layers", "hidden_size", at("num_experts", list("num_experts")),
                    at("moe_topk", list("moe_topk")), at("moe_intermediate_size", list("moe_intermediate_size")),
                    at("num_shared_expert", list("num_shared_expert")), "groups", "groups per token"},
                   c.layers, c.hidden, experts[li], ks[li], fs[li], shared[li], 1, 1);
      shapes.push_back({experts[li], static_cast<int>(ks[li]), fs[li], shared[li], shared[li] * c.dense_intermediate});
    }
    set_counts(c, ks[0], 1, 1, shapes[0].shared_experts);
    c.gating = model_gating::softmax;
    c.renormalize = true;
    c.renormalize_min = std::numeric_limits<float>::epsilon();  // torch.finfo(gates.dtype).eps, fp32
    const model_layer_shape first = shapes[0];
    model_layer_shape most = first;
    for (const auto& sh : shapes) {
      most.experts = std::max(most.experts, sh.experts);
      most.experts_per_token = std::max(most.experts_per_token, sh.experts_per_token);
      most.moe_intermediate = std::max(most.moe_intermediate, sh.moe_intermediate);
      most.shared_experts = std::max(most.shared_experts, sh.shared_experts);
      most.shared_intermediate = std::max(most.shared_intermediate, sh.shared_intermediate);
    }
    const bool uniform = std::all_of(shapes.begin(), shapes.end(), [&](const model_layer_shape& sh) { return sh == first; });
    c.experts = most.experts;
    c.experts_per_token = most.experts_per_token;
    c.moe_intermediate = most.moe_intermediate;
    c.shared_experts = most.shared_experts;
    c.shared_intermediate = most.shared_intermediate;
    if (!uniform) c.layer_shapes = std::move(shapes);
    return c;
  }

  // MiniMax-Text-01 / MiniMax-M1 (MiniMaxConfig; MiniMaxSparseMoeBlock, Mixtral's, in
  // modeling_minimax.py): softmax over the experts, top-k, divided by their sum; every layer is
  // MoE, experts of intermediate_size. MiniMax-M2 (MiniMaxM2Config; MiniMaxM2TopKRouter in
  // modular_minimax_m2.py): sigmoid scores, experts chosen by score + e_score_correction_bias,
  // weighed by the unbiased scores divided by their sum. router_jitter_noise scales the input in
  // training only. Neither reference has a shared expert: shared_intermediate_size must be 0.
  static model_config read_minimax(const nlohmann::json& j, const std::string& t) {
    const section s{j, ""};
    const bool m2 = t == "minimax_m2";
    if (m2) {
      check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                            "experts_per_token", "moe_topk", "output_router_logits", "router_aux_loss_coef",
                            "router_jitter_noise", "shared_intermediate_size", "shared_moe_mode", "scoring_func",
                            "use_routing_bias"});
    } else {
      check_family_keys(s, {"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
                            "experts_per_token", "moe_topk", "output_router_logits", "router_aux_loss_coef",
                            "router_jitter_noise", "shared_intermediate_size", "shared_moe_mode"});
    }
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = t;
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_hidden_layers"});
    c.experts = s.optional_integer({"num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts"}, m2 ? 256 : 8);
    const index k = s.optional_integer({"num_experts_per_tok", "experts_per_token", "moe_topk"}, m2 ? 8 : 2);
    c.dense_intermediate = s.optional_integer({"intermediate_size"}, m2 ? 1536 : 14336);
    c.moe_intermediate = c.dense_intermediate;
    check_counts("moe::model_config",
                 {"num_hidden_layers", "hidden_size", "num_local_experts", "num_experts_per_tok", "intermediate_size",
                  "shared experts", "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, 0, 1, 1);
    set_counts(c, k, 1, 1, 0);
    (void)s.bounded({"shared_intermediate_size"}, 0, 0, 0);
    (void)s.optional_str("shared_moe_mode", "");  // the gate of a shared expert there is none of
    c.renormalize = true;
    c.train_jitter = s.non_negative("router_jitter_noise", 0.0);
    if (m2) {
      (void)s.one_of("scoring_func", "sigmoid", {"sigmoid"});
      c.gating = model_gating::sigmoid;
      c.selection_bias = s.boolean("use_routing_bias", true);
    }
    return c;
  }

  // LongCat-Flash (LongcatFlashConfig; LongcatFlashTopkRouter, LongcatFlashExperts and
  // LongcatFlashMoE in modular_longcat_flash.py): the router scores n_routed_experts +
  // zero_expert_num ids with a softmax, chooses by softmax + e_score_correction_bias, weighs by
  // the unbiased softmax times routed_scaling_factor, never renormalised; ids >= n_routed_experts
  // are identity experts (output w · x). Each of the num_layers layers holds two attention and
  // two dense MLP (ffn_hidden_size) sublayers and one MoE, so layers = num_layers, all MoE.
  static model_config read_longcat(const nlohmann::json& j) {
    const section s{j, ""};
    check_family_keys(s, {"n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts", "moe_topk",
                          "num_experts_per_tok", "experts_per_token", "zero_expert_num", "zero_expert_type",
                          "expert_ffn_hidden_size", "moe_intermediate_size", "routed_scaling_factor", "router_bias",
                          "router_dtype", "output_router_logits", "router_aux_loss_coef"});
    training_only(s, {"router_aux_loss_coef", "output_router_logits"});
    model_config c;
    c.model_type = "longcat_flash";
    c.hidden = s.integer({"hidden_size"});
    c.layers = s.integer({"num_layers"});
    c.dense_intermediate = s.optional_integer({"ffn_hidden_size"}, 12288);
    c.experts = s.optional_integer({"n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts"}, 512);
    const index k = s.optional_integer({"moe_topk", "num_experts_per_tok", "experts_per_token"}, 12);
    c.moe_intermediate = s.optional_integer({"expert_ffn_hidden_size", "moe_intermediate_size"}, 2048);
    c.identity_experts = s.bounded({"zero_expert_num"}, 256, 0, index{1} << 20);
    check_counts("moe::model_config",
                 {"num_layers", "hidden_size", "n_routed_experts", "moe_topk", "expert_ffn_hidden_size", "shared experts",
                  "groups", "groups per token"},
                 c.layers, c.hidden, c.experts, k, c.moe_intermediate, 0, 1, 1, c.experts + c.identity_experts);
    check_width(s, "ffn_hidden_size", c.dense_intermediate);
    set_counts(c, k, 1, 1, 0);
    (void)s.one_of("zero_expert_type", "identity", {"identity"});
    (void)s.one_of("router_dtype", "float32", {"float32", "fp32"});
    c.gating = model_gating::softmax;
    c.selection_bias = true;
    c.renormalize = false;
    c.route_scale = s.positive("routed_scaling_factor", 6.0);
    c.router_bias = s.boolean("router_bias", false);
    return c;
  }

  [[noreturn]] static void fail(const char* what, const char* needs) {
    detail::throw_error(error_id::config, detail::concat("moe::model_config::", what, ": the model needs ", needs));
  }
  // Keys a config may hold that concern MoE routing: anything else that looks like a MoE key is
  // an error, so that a field this reader would ignore cannot change routing silently.
  static void check_known_keys(const nlohmann::json& j) {
    static const std::set<std::string> known = {
        "num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok",
        "experts_per_token", "moe_topk", "moe_intermediate_size", "norm_topk_prob", "scoring_func", "topk_method",
        "n_group", "topk_group", "routed_scaling_factor", "n_shared_experts", "first_k_dense_replace", "moe_layer_freq",
        "shared_expert_intermediate_size", "decoder_sparse_step", "mlp_only_layers", "output_router_logits",
        "router_aux_loss_coef", "aux_loss_alpha", "seq_aux", "ep_size"};
    for (const auto& item : j.items()) {
      const std::string& k = item.key();
      const bool moe_like = k.find("expert") != std::string::npos || k.find("moe") != std::string::npos ||
                            k.find("router") != std::string::npos || k.find("topk") != std::string::npos ||
                            k.find("routed") != std::string::npos || k.find("top_k") != std::string::npos;
      if (moe_like && !known.count(k)) {
        detail::fail_parameter(error_id::config, "moe::model_config", k, "a MoE key this reader knows", "an unknown key");
      }
    }
  }
  // One JSON object of a config (the root, Llama 4's text_config, DBRX's ffn_config): typed reads
  // whose errors name the field as `prefix + key` (prefix "" for the root).
  struct section {
    const nlohmann::json& j;
    std::string prefix;

    [[nodiscard]] std::string name(std::string_view key) const { return prefix + std::string(key); }
    [[nodiscard]] bool has(const char* key) const { return j.contains(key) && !j[key].is_null(); }
    template <class Actual>
    [[noreturn]] void fail(std::string_view key, std::string_view expected, const Actual& actual) const {
      detail::fail_parameter(error_id::config, "moe::model_config", name(key), expected, actual);
    }
    [[nodiscard]] std::string optional_str(const char* key, const char* fallback) const {
      if (!has(key)) return fallback;
      if (!j[key].is_string()) fail(key, "a string", j[key].type_name());
      return j[key].get<std::string>();
    }
    // The value of the first present alias; every present alias must agree.
    [[nodiscard]] index optional_integer(std::initializer_list<const char*> aliases, index fallback) const {
      const char* first = nullptr;
      index value = fallback;
      for (const char* a : aliases) {
        if (!has(a)) continue;
        if (!j[a].is_number_integer()) fail(a, "an integer", j[a].type_name());
        const auto v = j[a].get<index>();
        if (first && v != value) fail(a, detail::concat("equal to '", name(first), "' = ", value, " (aliases must agree)"), v);
        if (!first) {
          first = a;
          value = v;
        }
      }
      return value;
    }
    [[nodiscard]] index integer(std::initializer_list<const char*> aliases) const {
      bool any = false;
      for (const char* a : aliases) any = any || has(a);
      if (!any) fail(*aliases.begin(), "present (or an alias)", "missing");
      return optional_integer(aliases, 0);
    }
    [[nodiscard]] bool boolean(const char* key, bool fallback) const {
      if (!has(key)) return fallback;
      if (!j[key].is_boolean()) fail(key, "a bool", j[key].type_name());
      return j[key].get<bool>();
    }
    [[nodiscard]] double number(const char* key, double fallback) const {
      if (!has(key)) return fallback;
      if (!j[key].is_number()) fail(key, "a number", j[key].type_name());
      return j[key].get<double>();
    }
    /// A finite number > 0 (a scale).
    [[nodiscard]] float positive(const char* key, double fallback) const {
      const auto v = static_cast<float>(number(key, fallback));
      if (!(v > 0.0f) || !std::isfinite(v)) fail(key, "finite and > 0", v);
      return v;
    }
    /// A finite number >= 0 (an epsilon, a noise amplitude).
    [[nodiscard]] float non_negative(const char* key, double fallback) const {
      const auto v = static_cast<float>(number(key, fallback));
      if (!(v >= 0.0f) || !std::isfinite(v)) fail(key, "finite and >= 0", v);
      return v;
    }
    /// A string that must be one of `allowed` (the values the reference code implements).
    std::string one_of(const char* key, const char* fallback, std::initializer_list<const char*> allowed) const {
      const std::string v = optional_str(key, fallback);
      std::string list;
      for (const char* a : allowed) {
        if (v == a) return v;
        list += list.empty() ? "" : " or ";
        list += a;
      }
      fail(key, list, v);
    }
    /// An integer in [lo, hi].
    [[nodiscard]] index bounded(std::initializer_list<const char*> aliases, index fallback, index lo, index hi) const {
      const index v = optional_integer(aliases, fallback);
      if (v < lo || v > hi) fail(*aliases.begin(), detail::concat("in [", lo, ", ", hi, "]"), v);
      return v;
    }
    /// An integer, or a list of `n` integers (one per layer); the value of each layer.
    [[nodiscard]] std::vector<index> per_layer(const char* key, index n, std::optional<index> fallback) const {
      if (!has(key)) {
        if (!fallback) fail(key, "present", "missing");
        return std::vector<index>(static_cast<std::size_t>(n), *fallback);
      }
      const auto& v = j[key];
      if (v.is_number_integer()) return std::vector<index>(static_cast<std::size_t>(n), v.get<index>());
      if (!v.is_array()) fail(key, "an integer or a list of integers", v.type_name());
      if (static_cast<index>(v.size()) != n) fail(key, detail::concat("a list of ", n, " integers (one per layer)"), detail::concat(v.size(), " entries"));
      std::vector<index> out;
      for (const auto& e : v) {
        if (!e.is_number_integer()) fail(key, "a list of integers", detail::concat("an entry of type ", e.type_name()));
        out.push_back(e.get<index>());
      }
      return out;
    }
  };

  // Keys that look like MoE keys in the families read by the per-family readers: a wider net
  // than check_known_keys, since these families spread MoE settings over more names.
  static bool moe_like(const std::string& k) {
    for (const char* w : {"expert", "moe", "router", "routed", "routing", "topk", "top_k", "gating", "jitter", "capacity",
                          "shared", "sparse", "dense", "scoring", "mlp_only", "group"}) {
      if (k.find(w) != std::string::npos) return true;
    }
    return false;
  }
  // Every MoE-looking key of `s` must be one the family's reader reads (or knows to be training
  // only): a field it would ignore must not change routing silently.
  static void check_family_keys(const section& s, std::initializer_list<const char*> known) {
    for (const auto& item : s.j.items()) {
      const std::string& k = item.key();
      if (!moe_like(k)) continue;
      bool ok = false;
      for (const char* n : known) ok = ok || k == n;
      if (!ok) s.fail(k, "a MoE key this reader knows", "an unknown key");
    }
  }
  // Training-only keys: read for their type, no effect on inference routing.
  static void training_only(const section& s, std::initializer_list<const char*> keys) {
    for (const char* k : keys) {
      if (!s.has(k)) continue;
      if (!s.j[k].is_number() && !s.j[k].is_boolean()) s.fail(k, "a number or a bool", s.j[k].type_name());
    }
  }
  static void check_width(const section& s, const char* key, index v) {
    if (v < 1 || v > (index{1} << 24)) s.fail(key, "in [1, 16777216]", v);
  }

  static std::string str(const nlohmann::json& j, const char* key) {
    if (!j.contains(key) || !j[key].is_string()) detail::fail_parameter(error_id::config, "moe::model_config", key, "a string", "missing");
    return j[key].get<std::string>();
  }
  static std::string optional_str(const nlohmann::json& j, const char* key, const char* fallback) {
    return section{j, ""}.optional_str(key, fallback);
  }
  static index optional_integer(const nlohmann::json& j, std::initializer_list<const char*> aliases, index fallback) {
    return section{j, ""}.optional_integer(aliases, fallback);
  }
  static index integer(const nlohmann::json& j, std::initializer_list<const char*> aliases) {
    return section{j, ""}.integer(aliases);
  }
  static bool boolean(const nlohmann::json& j, const char* key, bool fallback) { return section{j, ""}.boolean(key, fallback); }
  static double number(const nlohmann::json& j, const char* key, double fallback) { return section{j, ""}.number(key, fallback); }
};

}  // namespace moe
