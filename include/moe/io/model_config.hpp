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
// kimi_k2 (DeepseekV3ForCausalLM); gpt_oss. From a GGUF file's metadata (from_gguf): llama.cpp's
// `<arch>.expert_*` keys, plus what llama.cpp fixes per architecture in its graph code for the
// architectures handled here (gpt-oss's softmax over the selected and router bias, Mixtral's
// (`llama`) renormalisation, Qwen2-MoE's gated shared expert); other architectures' hard-coded
// choices are not known to this reader.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <fstream>
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
  softmax,            ///< softmax over all experts, then top-k (Mixtral, Qwen, OLMoE)
  sigmoid,            ///< sigmoid scores, top-k (DeepSeek-V3, Kimi K2)
  topk_then_softmax,  ///< top-k of the (biased) logits, softmax over the k (gpt-oss)
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

  [[nodiscard]] bool is_moe_layer(index l) const { return l >= 0 && l < layers && moe_layer[static_cast<std::size_t>(l)]; }

  /// Options of moe::top_k for the softmax families. Throws for other gatings.
  [[nodiscard]] top_k_options top_k() const {
    if (gating != model_gating::softmax || n_groups != 1 || selection_bias) {
      fail("top_k()", "a softmax top-k router (this model routes otherwise: use group_limited() or topk_softmax())");
    }
    return {.k = experts_per_token, .renormalize = renormalize, .route_scale = route_scale};
  }
  /// Options of moe::group_limited<moe::sigmoid_gate> for DeepSeek-V3-style routing.
  [[nodiscard]] group_limited_options group_limited() const {
    if (gating != model_gating::sigmoid) fail("group_limited()", "sigmoid gating (DeepSeek-V3 family)");
    return {.k = experts_per_token, .n_groups = n_groups, .topk_groups = topk_groups, .renormalize = renormalize,
            .route_scale = route_scale};
  }

  /// Options of moe::topk_softmax for gpt-oss (the router bias is a checkpoint tensor:
  /// `mlp.router.bias`, GGUF `ffn_gate_inp.bias`; pass it as `logit_bias`).
  [[nodiscard]] topk_softmax_options topk_softmax() const {
    if (gating != model_gating::topk_then_softmax) fail("topk_softmax()", "top-k then softmax gating (gpt-oss)");
    return {.k = experts_per_token};
  }

  /// Checks the ranges of every count (a config or a file's metadata is input): throws
  /// moe::error naming the field. Both readers call it before using the counts.
  /// `names`: the fields as the source calls them (layers, hidden, experts, k, expert width,
  /// shared experts, groups, groups per token).
  static void check_counts(std::string_view where, const std::array<std::string, 8>& names, index layers, index hidden,
                           index experts, index k, index moe_f, index shared, index groups, index topk_groups) {
    const auto in = [&](int i, index v, index lo, index hi) {
      if (v < lo || v > hi) detail::fail_parameter(error_id::config, where, names[static_cast<std::size_t>(i)], detail::concat("in [", lo, ", ", hi, "]"), v);
    };
    in(0, layers, 1, index{1} << 20);
    in(1, hidden, 1, index{1} << 24);
    in(2, experts, 1, index{1} << 20);
    in(3, k, 1, experts);
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
    model_config c;
    c.model_type = str(j, "model_type");
    const auto& t = c.model_type;
    static const std::set<std::string> families = {"mixtral", "qwen2_moe", "qwen3_moe", "qwen3_next", "olmoe",
                                                   "deepseek_v3", "kimi_k2", "gpt_oss"};
    if (!families.count(t)) {
      detail::fail_parameter(error_id::config, "moe::model_config", "model_type",
                             "one of mixtral, qwen2_moe, qwen3_moe, qwen3_next, olmoe, deepseek_v3, kimi_k2, gpt_oss", t);
    }
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

 private:
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
  static std::string str(const nlohmann::json& j, const char* key) {
    if (!j.contains(key) || !j[key].is_string()) detail::fail_parameter(error_id::config, "moe::model_config", key, "a string", "missing");
    return j[key].get<std::string>();
  }
  static std::string optional_str(const nlohmann::json& j, const char* key, const char* fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_string()) detail::fail_parameter(error_id::config, "moe::model_config", key, "a string", j[key].type_name());
    return j[key].get<std::string>();
  }
  // The value of the first present alias; every present alias must agree.
  static index optional_integer(const nlohmann::json& j, std::initializer_list<const char*> aliases, index fallback) {
    const char* first = nullptr;
    index value = fallback;
    for (const char* a : aliases) {
      if (!j.contains(a) || j[a].is_null()) continue;
      if (!j[a].is_number_integer()) detail::fail_parameter(error_id::config, "moe::model_config", a, "an integer", j[a].type_name());
      const auto v = j[a].get<index>();
      if (first && v != value) {
        detail::fail_parameter(error_id::config, "moe::model_config", a, detail::concat("equal to '", first, "' = ", value, " (aliases must agree)"), v);
      }
      if (!first) {
        first = a;
        value = v;
      }
    }
    return value;
  }
  static index integer(const nlohmann::json& j, std::initializer_list<const char*> aliases) {
    bool any = false;
    for (const char* a : aliases) any = any || (j.contains(a) && !j[a].is_null());
    if (!any) detail::fail_parameter(error_id::config, "moe::model_config", *aliases.begin(), "present (or an alias)", "missing");
    return optional_integer(j, aliases, 0);
  }
  static bool boolean(const nlohmann::json& j, const char* key, bool fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_boolean()) detail::fail_parameter(error_id::config, "moe::model_config", key, "a bool", j[key].type_name());
    return j[key].get<bool>();
  }
  static double number(const nlohmann::json& j, const char* key, double fallback) {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    if (!j[key].is_number()) detail::fail_parameter(error_id::config, "moe::model_config", key, "a number", j[key].type_name());
    return j[key].get<double>();
  }
};

}  // namespace moe
