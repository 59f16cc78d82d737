// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/model_config.hpp: each published config.json of tests/data/hf-configs
// (sources and checksums in its SOURCES.md) gives the routing fields its model's reference code
// uses, field by field; aliases that disagree, unknown MoE keys and unknown families are errors.
#include <catch2/catch.hpp>

#include <limits>
#include <string>

#include <moe/io/model_config.hpp>
#include <moe/moe.hpp>

#include "../support/random.hpp"

namespace {
using moe::index;

moe::model_config load(const std::string& name) {
  return moe::model_config::from_file(std::string(MOE_TEST_DATA_DIR) + "/hf-configs/" + name);
}

TEST_CASE("model_config: Mixtral, OLMoE and the Qwen family", "[io][model_config]") {
  const auto mixtral = load("mixtral-8x7b.json");
  CHECK(mixtral.model_type == "mixtral");
  CHECK(mixtral.experts == 8);
  CHECK(mixtral.experts_per_token == 2);
  CHECK(mixtral.gating == moe::model_gating::softmax);
  CHECK(mixtral.renormalize);  // implicit in MixtralSparseMoeBlock
  CHECK(mixtral.hidden == 4096);
  CHECK(mixtral.moe_intermediate == 14336);
  CHECK(mixtral.shared_experts == 0);
  CHECK(mixtral.layers == 32);
  CHECK(mixtral.is_moe_layer(0));
  CHECK(mixtral.is_moe_layer(31));

  const auto olmoe = load("olmoe-1b-7b.json");
  CHECK(olmoe.experts == 64);
  CHECK(olmoe.experts_per_token == 8);
  CHECK_FALSE(olmoe.renormalize);
  CHECK(olmoe.moe_intermediate == 1024);
  CHECK(olmoe.layers == 16);
  // The router built from it routes like the preset.
  moe_test::rng rng(1);
  const moe::top_k<> r(rng.matrix(olmoe.experts, olmoe.hidden, 0.02f), olmoe.top_k());
  CHECK(r.num_experts() == 64);
  CHECK(r.max_slots() == 8);
  CHECK(olmoe.top_k().renormalize == false);

  const auto q15 = load("qwen1.5-moe-a2.7b.json");
  CHECK(q15.model_type == "qwen2_moe");
  CHECK(q15.experts == 60);
  CHECK(q15.experts_per_token == 4);
  CHECK_FALSE(q15.renormalize);
  CHECK(q15.moe_intermediate == 1408);
  CHECK(q15.shared_experts == 1);
  CHECK(q15.shared_intermediate == 5632);
  CHECK(q15.shared_gate);
  CHECK(q15.is_moe_layer(0));

  const auto q3 = load("qwen3-30b-a3b.json");
  CHECK(q3.experts == 128);
  CHECK(q3.experts_per_token == 8);
  CHECK(q3.renormalize);
  CHECK(q3.moe_intermediate == 768);
  CHECK(q3.shared_experts == 0);
  CHECK(q3.layers == 48);
  for (index l = 0; l < 48; ++l) CHECK(q3.is_moe_layer(l));

  const auto next = load("qwen3-next-80b-a3b.json");
  CHECK(next.experts == 512);
  CHECK(next.experts_per_token == 10);
  CHECK(next.renormalize);
  CHECK(next.moe_intermediate == 512);
  CHECK(next.shared_experts == 1);
  CHECK(next.shared_intermediate == 512);
  CHECK(next.shared_gate);
}

TEST_CASE("model_config: DeepSeek-V3, Kimi K2 and gpt-oss", "[io][model_config]") {
  const auto v3 = load("deepseek-v3.json");
  CHECK(v3.experts == 256);
  CHECK(v3.experts_per_token == 8);
  CHECK(v3.gating == moe::model_gating::sigmoid);
  CHECK(v3.selection_bias);  // noaux_tc: e_score_correction_bias
  CHECK(v3.n_groups == 8);
  CHECK(v3.topk_groups == 4);
  CHECK(v3.renormalize);
  CHECK(v3.route_scale == 2.5f);
  CHECK(v3.shared_experts == 1);
  CHECK(v3.shared_intermediate == 2048);
  CHECK(v3.moe_intermediate == 2048);
  CHECK(v3.hidden == 7168);
  CHECK(v3.layers == 61);
  CHECK_FALSE(v3.is_moe_layer(0));  // first_k_dense_replace 3
  CHECK_FALSE(v3.is_moe_layer(2));
  CHECK(v3.is_moe_layer(3));
  CHECK(v3.is_moe_layer(60));
  const auto gl = v3.group_limited();
  CHECK(gl.k == 8);
  CHECK(gl.n_groups == 8);
  CHECK(gl.topk_groups == 4);
  CHECK(gl.route_scale == 2.5f);
  CHECK_THROWS_WITH(v3.top_k(), Catch::Contains("use group_limited() or topk_softmax()"));
  moe_test::rng rng(2);
  const moe::group_limited<moe::sigmoid_gate> router(rng.matrix(v3.experts, 16), gl);
  CHECK(router.num_experts() == 256);

  const auto kimi = load("kimi-k2.json");
  CHECK(kimi.model_type == "kimi_k2");
  CHECK(kimi.experts == 384);
  CHECK(kimi.experts_per_token == 8);
  CHECK(kimi.gating == moe::model_gating::sigmoid);
  CHECK(kimi.n_groups == 1);
  CHECK(kimi.topk_groups == 1);
  CHECK(kimi.route_scale == 2.827f);
  CHECK(kimi.shared_experts == 1);
  CHECK_FALSE(kimi.is_moe_layer(0));
  CHECK(kimi.is_moe_layer(1));

  const auto oss = load("gpt-oss-20b.json");
  CHECK(oss.experts == 32);
  CHECK(oss.experts_per_token == 4);  // num_experts_per_tok and experts_per_token agree
  CHECK(oss.gating == moe::model_gating::topk_then_softmax);
  CHECK(oss.router_bias);
  CHECK(oss.moe_intermediate == 2880);
  CHECK_THROWS_WITH(oss.top_k(), Catch::Contains("a softmax top-k router"));
  CHECK_THROWS_WITH(oss.group_limited(), Catch::Contains("sigmoid gating"));
  CHECK(oss.topk_softmax().k == 4);
  CHECK_THROWS_WITH(v3.topk_softmax(), Catch::Contains("top-k then softmax gating"));
}

TEST_CASE("model_config: contradictions, unknown MoE keys and unknown families are errors", "[io][model_config][error]") {
  auto j = nlohmann::json::parse(R"({"model_type": "mixtral", "hidden_size": 64, "num_hidden_layers": 2,
                                      "intermediate_size": 128, "num_local_experts": 8, "num_experts_per_tok": 2})");
  CHECK_NOTHROW(moe::model_config::from_json(j));
  auto a = j;
  a["num_experts"] = 16;  // an alias that disagrees
  CHECK_THROWS_WITH(moe::model_config::from_json(a), Catch::Contains("parameter 'num_local_experts' must be equal to 'num_experts' = 16"));
  auto b = j;
  b["moe_router_softcap"] = 30.0;  // a MoE key the reader does not know
  CHECK_THROWS_WITH(moe::model_config::from_json(b), Catch::Contains("parameter 'moe_router_softcap' must be a MoE key this reader knows"));
  auto c = j;
  c["model_type"] = "hunyuan";
  CHECK_THROWS_WITH(moe::model_config::from_json(c), Catch::Contains("parameter 'model_type' must be one of mixtral"));
  auto d = j;
  d["num_experts_per_tok"] = 9;
  CHECK_THROWS_WITH(moe::model_config::from_json(d), Catch::Contains("parameter 'num_experts_per_tok' must be in [1, 8], got 9"));
  auto e = j;
  e.erase("num_local_experts");
  CHECK_THROWS_WITH(moe::model_config::from_json(e), Catch::Contains("parameter 'num_experts' must be present (or an alias)"));
  auto f = nlohmann::json::parse(R"({"model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 2,
                                      "n_routed_experts": 8, "num_experts_per_tok": 2, "scoring_func": "tanh"})");
  CHECK_THROWS_WITH(moe::model_config::from_json(f), Catch::Contains("parameter 'scoring_func' must be sigmoid or softmax, got tanh"));
  f["scoring_func"] = "sigmoid";
  f["n_group"] = 3;
  CHECK_THROWS_WITH(moe::model_config::from_json(f), Catch::Contains("parameter 'n_group' must be a divisor of 8, got 3"));
  CHECK_THROWS_WITH(moe::model_config::from_file("/nonexistent/config.json"), Catch::Contains("cannot open"));
  auto g = j;
  g["num_hidden_layers"] = -1;  // a count that would drive an allocation
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'num_hidden_layers' must be in [1, 1048576], got -1"));
  g["num_hidden_layers"] = 2;
  g["num_experts_per_tok"] = (std::int64_t{1} << 32) + 2;  // would truncate to 2 as an int
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'num_experts_per_tok' must be in [1, 8]"));
  g["num_experts_per_tok"] = nlohmann::json::parse(std::string(1000, '[') + std::string(1000, ']'));
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'num_experts_per_tok' must be an integer, got array"));
  // DeepSeek-V3 configs that omit fields get DeepseekV3Config's defaults.
  const auto v3 = moe::model_config::from_json(nlohmann::json::parse(R"({"model_type": "deepseek_v3", "hidden_size": 64, "num_hidden_layers": 4})"));
  CHECK(v3.experts == 256);
  CHECK(v3.gating == moe::model_gating::sigmoid);
  CHECK(v3.selection_bias);
  CHECK(v3.n_groups == 8);
  CHECK(v3.topk_groups == 4);
  CHECK(v3.route_scale == 2.5f);
  CHECK(v3.shared_experts == 1);
  CHECK_FALSE(v3.is_moe_layer(2));
  CHECK(v3.is_moe_layer(3));
}

}  // namespace

namespace {

TEST_CASE("model_config from GGUF metadata (llama.cpp's <arch>.expert_* keys)", "[io][model_config]") {
  moe::io::gguf_writer w;
  w.add_string("general.architecture", "deepseek2");
  w.add_uint("deepseek2.block_count", 4);
  w.add_uint("deepseek2.embedding_length", 64);
  w.add_uint("deepseek2.feed_forward_length", 256);
  w.add_uint("deepseek2.expert_feed_forward_length", 32);
  w.add_uint("deepseek2.expert_count", 16);
  w.add_uint("deepseek2.expert_used_count", 4);
  w.add_uint("deepseek2.expert_gating_func", 2);
  w.add_bool("deepseek2.expert_weights_norm", true);
  w.add_float("deepseek2.expert_weights_scale", 2.5f);
  w.add_uint("deepseek2.expert_shared_count", 1);
  w.add_uint("deepseek2.leading_dense_block_count", 1);
  w.add_uint("deepseek2.expert_group_count", 4);
  w.add_uint("deepseek2.expert_group_used_count", 2);
  const std::string bytes = w.bytes();
  const auto f = moe::io::gguf_file::from_bytes(std::as_bytes(std::span(bytes.data(), bytes.size())));
  const auto c = moe::model_config::from_gguf(f);
  CHECK(c.model_type == "deepseek2");
  CHECK(c.layers == 4);
  CHECK(c.hidden == 64);
  CHECK(c.moe_intermediate == 32);
  CHECK(c.dense_intermediate == 256);
  CHECK(c.experts == 16);
  CHECK(c.experts_per_token == 4);
  CHECK(c.gating == moe::model_gating::sigmoid);
  CHECK(c.renormalize);
  CHECK(c.route_scale == 2.5f);
  CHECK(c.shared_experts == 1);
  CHECK(c.shared_intermediate == 32);
  CHECK(c.n_groups == 4);
  CHECK(c.topk_groups == 2);
  CHECK_FALSE(c.is_moe_layer(0));
  CHECK(c.is_moe_layer(1));
  CHECK(c.group_limited().k == 4);
  moe::io::gguf_writer bad;
  bad.add_string("general.architecture", "olmoe");
  bad.add_uint("olmoe.block_count", 1);
  bad.add_uint("olmoe.embedding_length", 8);
  bad.add_uint("olmoe.expert_count", 4);
  bad.add_uint("olmoe.expert_used_count", 2);
  bad.add_float("olmoe.expert_router_softcap", 30.0f);
  const std::string bb = bad.bytes();
  const auto bf = moe::io::gguf_file::from_bytes(std::as_bytes(std::span(bb.data(), bb.size())));
  CHECK_THROWS_WITH(moe::model_config::from_gguf(bf), Catch::Contains("parameter 'olmoe.expert_router_softcap' must be a MoE key this reader knows"));
}

}  // namespace

// The families below are read from configs written here, with the values of one published
// config.json each (its Hugging Face repository is named above it; long non-MoE lists such as
// no_rope_layers, layer_types or rope_scaling tables are left out). Every field of the result is
// checked against the family's reference code, named in model_config.hpp.
namespace {

moe::model_config parse(const char* text) { return moe::model_config::from_json(nlohmann::json::parse(text)); }

// What the families that need none of the newer fields leave at their defaults.
void check_plain_extras(const moe::model_config& c) {
  CHECK(c.renormalize_p == 1.0f);
  CHECK(c.jitter_eps == 0.0f);
  CHECK_FALSE(c.weight_on_input);
  CHECK(c.identity_experts == 0);
  CHECK(c.layer_shapes.empty());
}

// zai-org/GLM-4.5-Air, config.json.
const char* const glm45_air = R"json({
  "architectures": ["Glm4MoeForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
  "pad_token_id": 151329, "eos_token_id": [151329, 151336, 151338], "head_dim": 128, "hidden_act": "silu",
  "hidden_size": 4096, "partial_rotary_factor": 0.5, "initializer_range": 0.02, "intermediate_size": 10944,
  "max_position_embeddings": 131072, "model_type": "glm4_moe", "moe_intermediate_size": 1408,
  "norm_topk_prob": true, "num_attention_heads": 96, "n_group": 1, "topk_group": 1, "n_routed_experts": 128,
  "n_shared_experts": 1, "routed_scaling_factor": 1.0, "num_experts_per_tok": 8, "first_k_dense_replace": 1,
  "num_hidden_layers": 46, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 1000000, "num_nextn_predict_layers": 1, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.54.0", "use_cache": true, "use_qk_norm": false, "vocab_size": 151552})json";

TEST_CASE("model_config: GLM-4.5-Air and GLM-4.5 (Glm4MoeTopkRouter)", "[io][model_config]") {
  const auto air = parse(glm45_air);
  CHECK(air.model_type == "glm4_moe");
  CHECK(air.hidden == 4096);
  CHECK(air.layers == 46);
  CHECK(air.experts == 128);
  CHECK(air.experts_per_token == 8);
  CHECK(air.moe_intermediate == 1408);
  CHECK(air.dense_intermediate == 10944);
  CHECK(air.gating == moe::model_gating::sigmoid);
  CHECK(air.selection_bias);  // e_score_correction_bias, always
  CHECK_FALSE(air.router_bias);
  CHECK(air.renormalize);
  CHECK(air.route_scale == 1.0f);
  CHECK(air.n_groups == 1);
  CHECK(air.topk_groups == 1);
  CHECK(air.shared_experts == 1);
  CHECK(air.shared_intermediate == 1408);  // n_shared_experts · moe_intermediate_size
  CHECK_FALSE(air.shared_gate);
  CHECK(air.renormalize_min == 0.0f);
  check_plain_extras(air);
  CHECK_FALSE(air.is_moe_layer(0));  // first_k_dense_replace 1
  for (index l = 1; l < 46; ++l) CHECK(air.is_moe_layer(l));
  const auto gl = air.group_limited();  // routes like DeepSeek-V3
  CHECK(gl.k == 8);
  CHECK(gl.n_groups == 1);
  CHECK(gl.topk_groups == 1);
  CHECK(gl.renormalize);
  CHECK(gl.route_scale == 1.0f);
  CHECK_THROWS_WITH(air.top_k(), Catch::Contains("use group_limited() or topk_softmax()"));
  moe_test::rng rng(3);
  const moe::group_limited<moe::sigmoid_gate> router(rng.matrix(air.experts, 16), gl);
  CHECK(router.num_experts() == 128);

  // zai-org/GLM-4.5: the MoE fields of its config.json on Air's other fields.
  auto full = nlohmann::json::parse(glm45_air);
  full["hidden_size"] = 5120;
  full["intermediate_size"] = 12288;
  full["moe_intermediate_size"] = 1536;
  full["n_routed_experts"] = 160;
  full["first_k_dense_replace"] = 3;
  full["num_hidden_layers"] = 92;
  full["routed_scaling_factor"] = 2.5;
  full["use_qk_norm"] = true;
  const auto g = moe::model_config::from_json(full);
  CHECK(g.experts == 160);
  CHECK(g.experts_per_token == 8);
  CHECK(g.shared_intermediate == 1536);
  CHECK(g.route_scale == 2.5f);
  CHECK_FALSE(g.is_moe_layer(2));
  CHECK(g.is_moe_layer(3));
  CHECK(g.is_moe_layer(91));
  // Glm4MoeConfig's defaults fill what a config omits.
  const auto d = parse(R"({"model_type": "glm4_moe", "hidden_size": 64, "num_hidden_layers": 3})");
  CHECK(d.experts == 128);
  CHECK(d.experts_per_token == 8);
  CHECK(d.moe_intermediate == 1408);
  CHECK(d.shared_experts == 1);
  CHECK(d.renormalize);
  CHECK(d.route_scale == 1.0f);
  CHECK_FALSE(d.is_moe_layer(0));
  CHECK(d.is_moe_layer(1));
}

// rednote-hilab/dots.llm1.inst, config.json.
const char* const dots_llm1 = R"json({
  "architectures": ["Dots1ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": null,
  "eos_token_id": 151649, "first_k_dense_replace": 1, "hidden_act": "silu", "hidden_size": 4096,
  "initializer_range": 0.02, "intermediate_size": 10944, "max_position_embeddings": 32768, "max_window_layers": 62,
  "model_type": "dots1", "moe_intermediate_size": 1408, "moe_layer_freq": 1, "n_routed_experts": 128,
  "n_shared_experts": 2, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts_per_tok": 6,
  "num_hidden_layers": 62, "num_key_value_heads": 32, "rms_norm_eps": 1e-05, "rope_scaling": null,
  "rope_theta": 10000000, "routed_scaling_factor": 2.5, "scoring_func": "noaux_tc", "sliding_window": null,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "use_cache": true, "use_sliding_window": false,
  "vocab_size": 152064})json";

TEST_CASE("model_config: dots.llm1 (Dots1TopkRouter is DeepseekV3TopkRouter)", "[io][model_config]") {
  const auto c = parse(dots_llm1);
  CHECK(c.model_type == "dots1");
  CHECK(c.hidden == 4096);
  CHECK(c.layers == 62);
  CHECK(c.experts == 128);
  CHECK(c.experts_per_token == 6);
  CHECK(c.moe_intermediate == 1408);
  CHECK(c.dense_intermediate == 10944);
  CHECK(c.gating == moe::model_gating::sigmoid);
  CHECK(c.selection_bias);
  CHECK_FALSE(c.router_bias);
  CHECK(c.renormalize);
  CHECK(c.route_scale == 2.5f);
  CHECK(c.n_groups == 1);
  CHECK(c.topk_groups == 1);
  CHECK(c.shared_experts == 2);
  CHECK(c.shared_intermediate == 2816);
  CHECK_FALSE(c.shared_gate);
  check_plain_extras(c);
  CHECK_FALSE(c.is_moe_layer(0));
  CHECK(c.is_moe_layer(1));
  CHECK(c.is_moe_layer(61));
  const auto gl = c.group_limited();
  CHECK(gl.k == 6);
  CHECK(gl.route_scale == 2.5f);
  // Dots1Config has no defaults for the counts, and norm_topk_prob defaults to false.
  auto j = nlohmann::json::parse(dots_llm1);
  j.erase("n_shared_experts");
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'n_shared_experts' must be present (or an alias), got missing"));
  j = nlohmann::json::parse(dots_llm1);
  j.erase("norm_topk_prob");
  j.erase("first_k_dense_replace");
  const auto d = moe::model_config::from_json(j);
  CHECK_FALSE(d.renormalize);
  CHECK(d.is_moe_layer(0));
  j["scoring_func"] = "softmax";  // the reference only has sigmoid scoring
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'scoring_func' must be sigmoid or noaux_tc, got softmax"));
  j["scoring_func"] = "sigmoid";
  j["moe_layer_freq"] = 2;  // DeepseekV3DecoderLayer ignores it: 2 would be read silently otherwise
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_layer_freq' must be in [1, 1], got 2"));
}

// meta-llama/Llama-4-Scout-17B-16E, config.json (vision_config and the per-layer lists left out).
const char* const llama4_scout = R"json({
  "architectures": ["Llama4ForConditionalGeneration"], "boi_token_index": 200080, "eoi_token_index": 200081,
  "image_token_index": 200092, "model_type": "llama4",
  "text_config": {
    "attention_bias": false, "attention_chunk_size": 8192, "attention_dropout": 0.0, "attn_scale": 0.1,
    "attn_temperature_tuning": 4, "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008],
    "floor_scale": 8192, "for_llm_compressor": false, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
    "initializer_range": 0.02, "interleave_moe_layer_step": 1, "intermediate_size": 8192,
    "intermediate_size_mlp": 16384, "max_position_embeddings": 10485760, "model_type": "llama4_text",
    "num_attention_heads": 40, "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8,
    "num_local_experts": 16, "output_router_logits": false, "pad_token_id": 200018, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "torch_dtype": "bfloat16",
    "use_cache": true, "use_qk_norm": true, "vocab_size": 202048},
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0.dev0",
  "vision_config": {"hidden_size": 1408, "image_size": 336, "model_type": "llama4_vision_model",
                    "num_hidden_layers": 34, "patch_size": 14, "vision_output_dim": 4096}})json";

TEST_CASE("model_config: Llama 4 Scout and Maverick (Llama4Router, Llama4TextMoe)", "[io][model_config]") {
  const auto c = parse(llama4_scout);
  CHECK(c.model_type == "llama4");
  CHECK(c.hidden == 5120);
  CHECK(c.layers == 48);
  CHECK(c.experts == 16);
  CHECK(c.experts_per_token == 1);
  CHECK(c.moe_intermediate == 8192);    // intermediate_size: the experts
  CHECK(c.dense_intermediate == 16384);  // intermediate_size_mlp: dense layers
  CHECK(c.gating == moe::model_gating::sigmoid_topk);
  CHECK(c.weight_on_input);  // routed_in = hidden_states * router_scores
  CHECK_FALSE(c.renormalize);
  CHECK(c.route_scale == 1.0f);
  CHECK_FALSE(c.selection_bias);
  CHECK_FALSE(c.router_bias);
  CHECK(c.n_groups == 1);
  CHECK(c.shared_experts == 1);
  CHECK(c.shared_intermediate == 8192);
  CHECK_FALSE(c.shared_gate);
  CHECK(c.train_jitter == 0.0f);
  CHECK(c.identity_experts == 0);
  CHECK(c.layer_shapes.empty());
  for (index l = 0; l < 48; ++l) CHECK(c.is_moe_layer(l));
  CHECK_THROWS_WITH(c.top_k(), Catch::Contains("a softmax top-k router"));
  CHECK_THROWS_WITH(c.group_limited(), Catch::Contains("sigmoid gating"));
  CHECK_THROWS_WITH(c.topk_softmax(), Catch::Contains("top-k then softmax gating"));

  // meta-llama/Llama-4-Maverick-17B-128E: 128 experts, MoE every second layer (1, 3, ..., 47).
  auto j = nlohmann::json::parse(llama4_scout);
  auto& t = j["text_config"];
  t["num_local_experts"] = 128;
  t["interleave_moe_layer_step"] = 2;
  const auto m = moe::model_config::from_json(j);
  CHECK(m.experts == 128);
  CHECK_FALSE(m.is_moe_layer(0));
  CHECK(m.is_moe_layer(1));
  CHECK_FALSE(m.is_moe_layer(46));
  CHECK(m.is_moe_layer(47));
  // A Llama4TextConfig on its own (Llama4ForCausalLM), with moe_layers listing the same layers.
  auto text = t;
  text["moe_layers"] = nlohmann::json::array();
  for (int l = 1; l < 48; l += 2) text["moe_layers"].push_back(l);
  const auto tx = moe::model_config::from_json(text);
  CHECK(tx.model_type == "llama4_text");
  CHECK(tx.moe_layer == m.moe_layer);
  text["moe_layers"].push_back(0);  // disagrees with interleave_moe_layer_step = 2
  CHECK_THROWS_WITH(moe::model_config::from_json(text),
                    Catch::Contains("parameter 'moe_layers' must be the layers that interleave_moe_layer_step = 2 gives (they must agree), got other layers"));
  text.erase("interleave_moe_layer_step");  // moe_layers alone decides
  const auto listed = moe::model_config::from_json(text);
  CHECK(listed.is_moe_layer(0));
  CHECK(listed.is_moe_layer(1));
  CHECK_FALSE(listed.is_moe_layer(2));
  // Errors name the nested field.
  t["interleave_moe_layer_step"] = 0;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'text_config.interleave_moe_layer_step' must be in [1, 48], got 0"));
  t["interleave_moe_layer_step"] = 2;
  t["num_experts"] = 64;  // an alias that disagrees
  CHECK_THROWS_WITH(moe::model_config::from_json(j),
                    Catch::Contains("parameter 'text_config.num_experts' must be equal to 'text_config.num_local_experts' = 128 (aliases must agree), got 64"));
  t.erase("num_experts");
  t["num_experts_per_tok"] = 129;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'text_config.num_experts_per_tok' must be in [1, 128], got 129"));
  j.erase("text_config");
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'text_config' must be an object, got missing"));
  j["text_config"] = "none";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'text_config' must be an object, got string"));
}

// databricks/dbrx-instruct, config.json.
const char* const dbrx_instruct = R"json({
  "architectures": ["DbrxForCausalLM"],
  "attn_config": {"clip_qkv": 8, "kv_n_heads": 8, "model_type": "", "rope_theta": 500000},
  "d_model": 6144, "emb_pdrop": 0.0,
  "ffn_config": {"ffn_hidden_size": 10752, "model_type": "", "moe_jitter_eps": 0.01, "moe_loss_weight": 0.05,
                 "moe_num_experts": 16, "moe_top_k": 4},
  "initializer_range": 0.02, "max_seq_len": 32768, "model_type": "dbrx", "n_heads": 48, "n_layers": 40,
  "output_router_logits": false, "resid_pdrop": 0.0, "router_aux_loss_coef": 0.05, "tie_word_embeddings": false,
  "torch_dtype": "bfloat16", "transformers_version": "4.38.2", "use_cache": true, "vocab_size": 100352})json";

TEST_CASE("model_config: DBRX (DbrxRouter, p-norm renormalisation)", "[io][model_config]") {
  const auto c = parse(dbrx_instruct);
  CHECK(c.model_type == "dbrx");
  CHECK(c.hidden == 6144);
  CHECK(c.layers == 40);
  CHECK(c.experts == 16);
  CHECK(c.experts_per_token == 4);
  CHECK(c.moe_intermediate == 10752);
  CHECK(c.dense_intermediate == 0);
  CHECK(c.gating == moe::model_gating::softmax);
  CHECK(c.renormalize);          // moe_normalize_expert_weights defaults to 1
  CHECK(c.renormalize_p == 1.0f);  // the 1-norm of softmax weights is their sum
  CHECK(c.renormalize_min == 0.0f);
  CHECK(c.route_scale == 1.0f);
  CHECK(c.train_jitter == 0.01f);  // training only
  CHECK(c.jitter_eps == 0.0f);
  CHECK_FALSE(c.selection_bias);
  CHECK_FALSE(c.router_bias);
  CHECK(c.shared_experts == 0);
  CHECK(c.shared_intermediate == 0);
  CHECK_FALSE(c.weight_on_input);
  CHECK(c.identity_experts == 0);
  for (index l = 0; l < 40; ++l) CHECK(c.is_moe_layer(l));
  const auto o = c.top_k();  // p = 1: moe::top_k's renormalisation is DBRX's
  CHECK(o.k == 4);
  CHECK(o.renormalize);
  CHECK(o.route_scale == 1.0f);

  auto j = nlohmann::json::parse(dbrx_instruct);
  j["ffn_config"]["moe_normalize_expert_weights"] = 2.0;  // divide by the Euclidean norm
  const auto p2 = moe::model_config::from_json(j);
  CHECK(p2.renormalize);
  CHECK(p2.renormalize_p == 2.0f);
  CHECK_THROWS_WITH(p2.top_k(), Catch::Contains("renormalisation by the sum (this model divides by a p-norm, p != 1)"));
  j["ffn_config"]["moe_normalize_expert_weights"] = nullptr;  // top_weights_scale = 1.0
  const auto none = moe::model_config::from_json(j);
  CHECK_FALSE(none.renormalize);
  CHECK(none.top_k().renormalize == false);
  j["ffn_config"]["moe_normalize_expert_weights"] = -1.0;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config.moe_normalize_expert_weights' must be finite and > 0, got -1"));
  j["ffn_config"]["moe_normalize_expert_weights"] = "l1";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config.moe_normalize_expert_weights' must be a number, got string"));
  j["ffn_config"].erase("moe_normalize_expert_weights");
  j["ffn_config"]["moe_capacity_factor"] = 1.25;  // DbrxFFNConfig refuses keys it does not know
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config.moe_capacity_factor' must be a key DbrxFFNConfig knows, got an unknown key"));
  j["ffn_config"].erase("moe_capacity_factor");
  j["ffn_config"]["moe_top_k"] = 17;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config.moe_top_k' must be in [1, 16], got 17"));
  j["ffn_config"]["moe_top_k"] = 4;
  j["ffn_config"]["uniform_expert_assignment"] = true;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config.uniform_expert_assignment' must be false"));
  j["ffn_config"] = nlohmann::json::array();
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'ffn_config' must be an object, got array"));
  j.erase("ffn_config");  // DbrxFFNConfig()'s defaults
  const auto d = moe::model_config::from_json(j);
  CHECK(d.experts == 4);
  CHECK(d.experts_per_token == 1);
  CHECK(d.moe_intermediate == 3584);
  CHECK(d.renormalize);
  CHECK(d.train_jitter == 0.0f);
}

// ibm-granite/granite-3.0-3b-a800m-instruct, config.json.
const char* const granite_3b = R"json({
  "architectures": ["GraniteMoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.1,
  "attention_multiplier": 0.015625, "bos_token_id": 0, "embedding_multiplier": 12.0, "eos_token_id": 0,
  "hidden_act": "silu", "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 512,
  "logits_scaling": 6.0, "max_position_embeddings": 4096, "model_type": "granitemoe", "num_attention_heads": 24,
  "num_experts_per_tok": 8, "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 40,
  "output_router_logits": false, "pad_token_id": 0, "residual_multiplier": 0.22, "rms_norm_eps": 1e-06,
  "rope_scaling": null, "rope_theta": 10000, "router_aux_loss_coef": 0.001, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.46.0.dev0", "use_cache": true, "vocab_size": 49155})json";

TEST_CASE("model_config: Granite MoE and Granite MoE Shared (GraniteMoeTopKGating)", "[io][model_config]") {
  const auto c = parse(granite_3b);
  CHECK(c.model_type == "granitemoe");
  CHECK(c.hidden == 1536);
  CHECK(c.layers == 32);
  CHECK(c.experts == 40);
  CHECK(c.experts_per_token == 8);
  CHECK(c.moe_intermediate == 512);
  CHECK(c.dense_intermediate == 512);
  CHECK(c.gating == moe::model_gating::topk_then_softmax);  // softmax over the top-k logits
  CHECK_FALSE(c.router_bias);
  CHECK_FALSE(c.renormalize);
  CHECK(c.route_scale == 1.0f);
  CHECK_FALSE(c.selection_bias);
  CHECK(c.n_groups == 1);
  CHECK(c.shared_experts == 0);
  CHECK(c.shared_intermediate == 0);
  check_plain_extras(c);
  for (index l = 0; l < 32; ++l) CHECK(c.is_moe_layer(l));
  CHECK(c.topk_softmax().k == 8);
  CHECK(c.topk_softmax().logit_bias.empty());
  CHECK_THROWS_WITH(c.top_k(), Catch::Contains("a softmax top-k router"));

  // GraniteMoeShared: the same config with a shared MLP (shared_intermediate_size > 0).
  auto j = nlohmann::json::parse(granite_3b);
  j["shared_intermediate_size"] = 1024;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'shared_intermediate_size' must be a MoE key this reader knows"));
  j["model_type"] = "granitemoeshared";
  const auto s = moe::model_config::from_json(j);
  CHECK(s.shared_experts == 1);
  CHECK(s.shared_intermediate == 1024);
  CHECK_FALSE(s.shared_gate);
  CHECK(s.gating == moe::model_gating::topk_then_softmax);
  j["shared_intermediate_size"] = 0;  // GraniteMoeSharedDecoderLayer: no shared MLP
  CHECK(moe::model_config::from_json(j).shared_experts == 0);
  j["shared_intermediate_size"] = -1;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'shared_intermediate_size' must be in [0, 16777216], got -1"));
}

// microsoft/Phi-3.5-MoE-instruct, config.json (auto_map and rope_scaling's factor lists left out).
const char* const phi35_moe = R"json({
  "architectures": ["PhiMoEForCausalLM"], "attention_bias": true, "attention_dropout": 0.0, "bos_token_id": 1,
  "eos_token_id": 32000, "hidden_act": "silu", "hidden_dropout": 0.0, "hidden_size": 4096,
  "initializer_range": 0.02, "input_jitter_noise": 0.01, "intermediate_size": 6400, "lm_head_bias": true,
  "max_position_embeddings": 131072, "model_type": "phimoe", "num_attention_heads": 32, "num_experts_per_tok": 2,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "num_local_experts": 16,
  "original_max_position_embeddings": 4096, "output_router_logits": false, "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0, "router_aux_loss_coef": 0.0, "router_jitter_noise": 0.01, "sliding_window": 131072,
  "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "use_cache": true,
  "vocab_size": 32064})json";

TEST_CASE("model_config: Phi-3.5-MoE (sparsemixer)", "[io][model_config]") {
  const auto c = parse(phi35_moe);
  CHECK(c.model_type == "phimoe");
  CHECK(c.hidden == 4096);
  CHECK(c.layers == 32);
  CHECK(c.experts == 16);
  CHECK(c.experts_per_token == 2);
  CHECK(c.moe_intermediate == 6400);
  CHECK(c.gating == moe::model_gating::sparsemixer);
  CHECK(c.jitter_eps == 0.01f);    // router_jitter_noise: the mask threshold 2ε, at inference too
  CHECK(c.train_jitter == 0.01f);  // input_jitter_noise: training only
  CHECK_FALSE(c.renormalize);
  CHECK(c.route_scale == 1.0f);
  CHECK_FALSE(c.selection_bias);
  CHECK_FALSE(c.router_bias);
  CHECK(c.shared_experts == 0);
  CHECK_FALSE(c.weight_on_input);
  CHECK(c.identity_experts == 0);
  for (index l = 0; l < 32; ++l) CHECK(c.is_moe_layer(l));
  CHECK_THROWS_WITH(c.top_k(), Catch::Contains("a softmax top-k router"));
  CHECK_THROWS_WITH(c.topk_softmax(), Catch::Contains("top-k then softmax gating"));
  auto j = nlohmann::json::parse(phi35_moe);
  j["num_experts_per_tok"] = 4;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_experts_per_tok' must be 2 (SparseMixer selects exactly two experts), got 4"));
  j["num_experts_per_tok"] = 2;
  j["router_jitter_noise"] = -0.5;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'router_jitter_noise' must be finite and >= 0, got -0.5"));
  j["router_jitter_noise"] = true;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'router_jitter_noise' must be a number, got boolean"));
}

// baidu/ERNIE-4.5-21B-A3B-PT, config.json.
const char* const ernie45_21b = R"json({
  "architectures": ["Ernie4_5_MoeForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 2560, "intermediate_size": 12288, "max_position_embeddings": 131072, "model_type": "ernie4_5_moe",
  "num_attention_heads": 20, "num_key_value_heads": 4, "num_hidden_layers": 28, "pad_token_id": 0,
  "rms_norm_eps": 1e-05, "use_cache": false, "vocab_size": 103424, "rope_theta": 500000, "use_bias": false,
  "moe_num_experts": 64, "moe_num_shared_experts": 2, "moe_layer_start_index": 1, "moe_intermediate_size": 1536,
  "moe_capacity": [64, 64, 64], "moe_gate": "topk", "moe_k": 6, "moe_layer_interval": 1, "moe_use_aux_free": true,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16"})json";

TEST_CASE("model_config: ERNIE 4.5 MoE (Ernie4_5_MoeTopKRouter)", "[io][model_config]") {
  const auto c = parse(ernie45_21b);
  CHECK(c.model_type == "ernie4_5_moe");
  CHECK(c.hidden == 2560);
  CHECK(c.layers == 28);
  CHECK(c.experts == 64);
  CHECK(c.experts_per_token == 6);
  CHECK(c.moe_intermediate == 1536);
  CHECK(c.dense_intermediate == 12288);
  CHECK(c.gating == moe::model_gating::softmax);
  CHECK(c.selection_bias);  // moe_statics: e_score_correction_bias on the softmax, for selection only
  CHECK(c.renormalize);
  CHECK(c.renormalize_min == 1e-12f);  // moe_norm_min's default
  CHECK(c.renormalize_p == 1.0f);
  CHECK(c.route_scale == 1.0f);
  CHECK(c.n_groups == 1);
  CHECK_FALSE(c.router_bias);
  CHECK(c.shared_experts == 2);
  CHECK(c.shared_intermediate == 3072);  // moe_intermediate_size · moe_num_shared_experts
  CHECK_FALSE(c.shared_gate);
  CHECK(c.jitter_eps == 0.0f);
  CHECK_FALSE(c.weight_on_input);
  CHECK(c.identity_experts == 0);
  CHECK(c.layer_shapes.empty());
  CHECK_FALSE(c.is_moe_layer(0));  // moe_layer_start_index 1
  for (index l = 1; l < 28; ++l) CHECK(c.is_moe_layer(l));  // end -1: the last layer
  CHECK_THROWS_WITH(c.top_k(), Catch::Contains("a softmax top-k router"));

  auto j = nlohmann::json::parse(ernie45_21b);
  j["moe_layer_interval"] = 2;
  j["moe_layer_end_index"] = 20;
  j["moe_use_aux_free"] = false;
  j["moe_norm_min"] = 1e-6;
  const auto p = moe::model_config::from_json(j);
  CHECK_FALSE(p.is_moe_layer(0));
  CHECK(p.is_moe_layer(1));   // (1 + 1) % 2 == 0
  CHECK_FALSE(p.is_moe_layer(2));
  CHECK(p.is_moe_layer(19));
  CHECK_FALSE(p.is_moe_layer(21));  // past moe_layer_end_index
  CHECK_FALSE(p.selection_bias);
  CHECK(p.renormalize_min == 1e-6f);
  CHECK(p.top_k().k == 6);  // without the bias: softmax, top-k, renormalised
  j["moe_layer_end_index"] = 28;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_layer_end_index' must be in [-1, 27], got 28"));
  j["moe_layer_end_index"] = -1;
  j["num_experts_per_tok"] = 8;  // Ernie4_5_MoeConfig's attribute_map: num_experts_per_tok is moe_k
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_experts_per_tok' must be equal to 'moe_k' = 6 (aliases must agree), got 8"));
  j.erase("num_experts_per_tok");
  j["moe_gate"] = "top2";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_gate' must be topk, got top2"));
  j["moe_gate"] = "topk";
  j["moe_capacity"] = 64;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_capacity' must be a list of numbers, got number"));
  j["moe_capacity"] = {64, 64, 64};
  j["moe_use_hard_gate"] = true;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_use_hard_gate' must be a MoE key this reader knows, got an unknown key"));
}

// tencent/Hunyuan-A13B-Instruct, config.json (lists of 32 written out below).
std::string hunyuan_a13b() {
  const auto list = [](int v) {
    std::string s = "[";
    for (int l = 0; l < 32; ++l) s += (l ? ", " : "") + std::to_string(v);
    return s + "]";
  };
  return R"json({"architectures": ["HunYuanMoEV1ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
    "attention_head_dim": 128, "bos_token_id": 1, "cla_share_factor": 2, "eod_token_id": 127967,
    "eos_token_id": 127960, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 3072, "max_position_embeddings": 32768, "model_type": "hunyuan_v1_moe",
    "moe_drop_tokens": false, "moe_intermediate_size": )json" +
         list(3072) + R"json(, "moe_layer_num_skipped": 0, "moe_random_routing_dropped_token": false,
    "moe_topk": )json" + list(8) + R"json(, "num_attention_heads": 32, "num_experts": 64,
    "num_hidden_layers": 32, "num_key_value_heads": 8, "num_shared_expert": )json" + list(1) + R"json(,
    "pad_token_id": 127961, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "routed_scaling_factor": 1.0,
    "group_limited_greedy": false, "capacity_factor": 1.0, "sep_token_id": 127962, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "use_cache": true, "use_cla": false, "use_mixed_mlp_moe": true, "use_mla": false,
    "use_qk_norm": true, "use_rotary_pos_emb": true, "vocab_size": 128167})json";
}

TEST_CASE("model_config: Hunyuan-A13B (HunYuanTopKGate, per-layer lists)", "[io][model_config]") {
  const auto c = moe::model_config::from_json(nlohmann::json::parse(hunyuan_a13b()));
  CHECK(c.model_type == "hunyuan_v1_moe");
  CHECK(c.hidden == 4096);
  CHECK(c.layers == 32);
  CHECK(c.experts == 64);
  CHECK(c.experts_per_token == 8);
  CHECK(c.moe_intermediate == 3072);
  CHECK(c.dense_intermediate == 3072);
  CHECK(c.gating == moe::model_gating::softmax);
  CHECK(c.renormalize);
  CHECK(c.renormalize_min == std::numeric_limits<float>::epsilon());
  CHECK(c.route_scale == 1.0f);
  CHECK_FALSE(c.selection_bias);
  CHECK_FALSE(c.router_bias);
  CHECK(c.n_groups == 1);
  CHECK(c.shared_experts == 1);
  CHECK(c.shared_intermediate == 3072);  // num_shared_expert · intermediate_size
  CHECK_FALSE(c.shared_gate);
  CHECK(c.layer_shapes.empty());  // the lists hold one value
  for (index l = 0; l < 32; ++l) CHECK(c.is_moe_layer(l));
  const auto o = c.top_k();
  CHECK(o.k == 8);
  CHECK(o.renormalize);

  // Lists that differ per layer: layer_shapes, scalars the largest, layer(l) each layer's.
  auto j = nlohmann::json::parse(hunyuan_a13b());
  j["moe_topk"][0] = 4;
  j["num_experts"] = nlohmann::json::array();
  for (int l = 0; l < 32; ++l) j["num_experts"].push_back(l < 16 ? 32 : 64);
  j["moe_intermediate_size"][31] = 2048;
  j["num_shared_expert"][5] = 2;
  const auto v = moe::model_config::from_json(j);
  REQUIRE(v.layer_shapes.size() == 32);
  CHECK(v.experts == 64);
  CHECK(v.experts_per_token == 8);
  CHECK(v.moe_intermediate == 3072);
  CHECK(v.shared_experts == 2);
  CHECK(v.shared_intermediate == 6144);
  CHECK(v.layer_shapes[0] == moe::model_layer_shape{32, 4, 3072, 1, 3072});
  CHECK(v.layer_shapes[5] == moe::model_layer_shape{32, 8, 3072, 2, 6144});
  CHECK(v.layer_shapes[31] == moe::model_layer_shape{64, 8, 2048, 1, 3072});
  const auto l0 = v.layer(0);
  CHECK(l0.experts == 32);
  CHECK(l0.experts_per_token == 4);
  CHECK(l0.layer_shapes.empty());
  CHECK(l0.top_k().k == 4);
  CHECK(v.layer(31).moe_intermediate == 2048);
  CHECK_THROWS_WITH(v.top_k(), Catch::Contains("the same counts in every MoE layer (they differ per layer: use layer(l) first)"));
  CHECK_THROWS_WITH(v.layer(32), Catch::Contains("parameter 'l' must be in [0, 31], got 32"));
  j["moe_topk"][0] = 33;  // more than layer 0's 32 experts
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_topk[0]' must be in [1, 32], got 33"));
  j["moe_topk"] = 8;
  j["num_experts"].erase(31);  // 31 entries for 32 layers
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_experts' must be a list of 32 integers (one per layer), got 31 entries"));
  j["num_experts"] = "64";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_experts' must be an integer or a list of integers, got string"));
  j["num_experts"] = 64;
  j["moe_drop_tokens"] = true;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_drop_tokens' must be false"));
  j["moe_drop_tokens"] = false;
  j["routed_scaling_factor"] = 2.5;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'routed_scaling_factor' must be 1 (the HunYuan references apply no scale), got 2.5"));
  j["routed_scaling_factor"] = 1.0;
  j["use_mixed_mlp_moe"] = false;  // no shared MLP
  const auto ns = moe::model_config::from_json(j);
  CHECK(ns.shared_experts == 0);
  CHECK(ns.shared_intermediate == 0);
  j["use_mixed_mlp_moe"] = true;
  j.erase("num_shared_expert");
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_shared_expert' must be present, got missing"));
}

// MiniMaxAI/MiniMax-M1-80k-hf, config.json (layer_types left out).
const char* const minimax_m1 = R"json({
  "architectures": ["MiniMaxForCausalLM"], "attention_dropout": 0.0, "block_size": 256, "bos_token_id": 1,
  "eos_token_id": 2, "full_attn_alpha_factor": 3.5565588200778455, "full_attn_beta_factor": 1.0, "head_dim": 128,
  "hidden_act": "silu", "hidden_size": 6144, "initializer_range": 0.02, "intermediate_size": 9216,
  "linear_attn_alpha_factor": 3.5565588200778455, "linear_attn_beta_factor": 1.0,
  "max_position_embeddings": 10240000, "mlp_alpha_factor": 3.5565588200778455, "mlp_beta_factor": 1.0,
  "model_type": "minimax", "num_attention_heads": 64, "num_experts_per_tok": 2, "num_hidden_layers": 80,
  "num_key_value_heads": 8, "num_local_experts": 32, "output_router_logits": false, "rms_norm_eps": 1e-05,
  "rope_theta": 10000000, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "sliding_window": null,
  "tie_word_embeddings": false, "vocab_size": 200064})json";

// MiniMaxAI/MiniMax-M2, config.json (attn_type_list left out).
const char* const minimax_m2 = R"json({
  "architectures": ["MiniMaxM2ForCausalLM"], "head_dim": 128, "hidden_act": "silu", "hidden_size": 3072,
  "intermediate_size": 1536, "max_position_embeddings": 196608, "model_type": "minimax_m2",
  "mtp_transformer_layers": 1, "num_attention_heads": 48, "num_experts_per_tok": 8, "num_hidden_layers": 62,
  "num_key_value_heads": 8, "num_local_experts": 256, "num_mtp_modules": 3, "output_router_logits": false,
  "qk_norm_type": "per_layer", "rms_norm_eps": 1e-06, "rope_theta": 5000000, "rotary_dim": 64,
  "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "scoring_func": "sigmoid",
  "shared_intermediate_size": 0, "tie_word_embeddings": false, "transformers_version": "4.46.1", "use_cache": true,
  "use_mtp": true, "use_qk_norm": true, "use_routing_bias": true, "vocab_size": 200064})json";

TEST_CASE("model_config: MiniMax-M1 and MiniMax-M2 (MiniMaxSparseMoeBlock, MiniMaxM2TopKRouter)", "[io][model_config]") {
  const auto m1 = parse(minimax_m1);
  CHECK(m1.model_type == "minimax");
  CHECK(m1.hidden == 6144);
  CHECK(m1.layers == 80);
  CHECK(m1.experts == 32);
  CHECK(m1.experts_per_token == 2);
  CHECK(m1.moe_intermediate == 9216);
  CHECK(m1.gating == moe::model_gating::softmax);
  CHECK(m1.renormalize);  // Mixtral's block: routing_weights /= sum
  CHECK(m1.route_scale == 1.0f);
  CHECK_FALSE(m1.selection_bias);
  CHECK_FALSE(m1.router_bias);
  CHECK(m1.shared_experts == 0);
  CHECK(m1.train_jitter == 0.0f);
  check_plain_extras(m1);
  for (index l = 0; l < 80; ++l) CHECK(m1.is_moe_layer(l));
  const auto o = m1.top_k();
  CHECK(o.k == 2);
  CHECK(o.renormalize);

  const auto m2 = parse(minimax_m2);
  CHECK(m2.model_type == "minimax_m2");
  CHECK(m2.hidden == 3072);
  CHECK(m2.layers == 62);
  CHECK(m2.experts == 256);
  CHECK(m2.experts_per_token == 8);
  CHECK(m2.moe_intermediate == 1536);
  CHECK(m2.gating == moe::model_gating::sigmoid);
  CHECK(m2.selection_bias);  // use_routing_bias: e_score_correction_bias
  CHECK(m2.renormalize);
  CHECK(m2.route_scale == 1.0f);
  CHECK(m2.n_groups == 1);
  CHECK(m2.shared_experts == 0);
  check_plain_extras(m2);
  for (index l = 0; l < 62; ++l) CHECK(m2.is_moe_layer(l));
  const auto gl = m2.group_limited();
  CHECK(gl.k == 8);
  CHECK(gl.n_groups == 1);
  CHECK(gl.renormalize);

  auto j = nlohmann::json::parse(minimax_m2);
  j["use_routing_bias"] = false;
  CHECK_FALSE(moe::model_config::from_json(j).selection_bias);
  j["scoring_func"] = "softmax";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'scoring_func' must be sigmoid, got softmax"));
  j["scoring_func"] = "sigmoid";
  j["shared_intermediate_size"] = 1536;  // neither reference has a shared expert
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'shared_intermediate_size' must be in [0, 0], got 1536"));
  auto k = nlohmann::json::parse(minimax_m1);
  k["use_routing_bias"] = true;  // an M2 key in an M1 config
  CHECK_THROWS_WITH(moe::model_config::from_json(k), Catch::Contains("parameter 'use_routing_bias' must be a MoE key this reader knows"));
}

// meituan-longcat/LongCat-Flash-Chat, config.json (auto_map left out).
const char* const longcat_flash = R"json({
  "architectures": ["LongcatFlashForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "expert_ffn_hidden_size": 2048, "ffn_hidden_size": 12288,
  "hidden_size": 6144, "kv_lora_rank": 512, "max_position_embeddings": 131072, "mla_scale_kv_lora": true,
  "mla_scale_q_lora": true, "model_type": "longcat_flash", "moe_topk": 12, "n_routed_experts": 512,
  "num_attention_heads": 64, "num_layers": 28, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05, "rope_theta": 10000000.0, "routed_scaling_factor": 6.0,
  "router_bias": false, "torch_dtype": "bfloat16", "v_head_dim": 128, "vocab_size": 131072,
  "zero_expert_num": 256, "zero_expert_type": "identity"})json";

TEST_CASE("model_config: LongCat-Flash (LongcatFlashTopkRouter, identity experts)", "[io][model_config]") {
  const auto c = parse(longcat_flash);
  CHECK(c.model_type == "longcat_flash");
  CHECK(c.hidden == 6144);
  CHECK(c.layers == 28);  // num_layers: each holds one MoE
  CHECK(c.experts == 512);
  CHECK(c.identity_experts == 256);  // ids 512..767 output w · x
  CHECK(c.experts_per_token == 12);
  CHECK(c.moe_intermediate == 2048);
  CHECK(c.dense_intermediate == 12288);
  CHECK(c.gating == moe::model_gating::softmax);  // over all 768 ids
  CHECK(c.selection_bias);
  CHECK_FALSE(c.renormalize);
  CHECK(c.route_scale == 6.0f);
  CHECK_FALSE(c.router_bias);
  CHECK(c.n_groups == 1);
  CHECK(c.shared_experts == 0);
  CHECK(c.jitter_eps == 0.0f);
  CHECK_FALSE(c.weight_on_input);
  CHECK(c.layer_shapes.empty());
  for (index l = 0; l < 28; ++l) CHECK(c.is_moe_layer(l));
  CHECK_THROWS_WITH(c.top_k(), Catch::Contains("a softmax top-k router"));

  auto j = nlohmann::json::parse(longcat_flash);
  j["zero_expert_num"] = 0;
  j["moe_topk"] = 512;
  const auto none = moe::model_config::from_json(j);
  CHECK(none.identity_experts == 0);
  CHECK(none.experts_per_token == 512);
  j["moe_topk"] = 513;  // more than the 512 + 0 ids the router scores
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_topk' must be in [1, 512], got 513"));
  j["zero_expert_num"] = 256;
  CHECK(moe::model_config::from_json(j).experts_per_token == 513);  // identity experts are selectable
  j["moe_topk"] = 12;
  j["zero_expert_type"] = "zero";
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'zero_expert_type' must be identity, got zero"));
  j["zero_expert_type"] = "identity";
  j["num_experts_per_tok"] = 8;  // LongCat's top_k alias that disagrees
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'num_experts_per_tok' must be equal to 'moe_topk' = 12 (aliases must agree), got 8"));
  j.erase("num_experts_per_tok");
  j["router_bias"] = 1;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'router_bias' must be a bool, got number"));
  j["router_bias"] = true;
  CHECK(moe::model_config::from_json(j).router_bias);
  j["zero_expert_num"] = -1;
  CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'zero_expert_num' must be in [0, 1048576], got -1"));
}

TEST_CASE("model_config: the newer families refuse unknown MoE keys, bad types and bad counts", "[io][model_config][error]") {
  // An unknown MoE-looking key in each family's config is an error, never ignored.
  for (const char* text : {glm45_air, dots_llm1, granite_3b, phi35_moe, ernie45_21b, minimax_m1, minimax_m2, longcat_flash}) {
    auto j = nlohmann::json::parse(text);
    j["moe_router_softcap"] = 30.0;
    CHECK_THROWS_WITH(moe::model_config::from_json(j), Catch::Contains("parameter 'moe_router_softcap' must be a MoE key this reader knows, got an unknown key"));
    auto k = nlohmann::json::parse(text);
    k["num_dense_layers"] = 2;  // a layer-pattern key no reference here reads
    CHECK_THROWS_WITH(moe::model_config::from_json(k), Catch::Contains("parameter 'num_dense_layers' must be a MoE key this reader knows"));
  }
  auto h = nlohmann::json::parse(hunyuan_a13b());
  h["topk_group"] = 1;
  CHECK_THROWS_WITH(moe::model_config::from_json(h), Catch::Contains("parameter 'topk_group' must be a MoE key this reader knows"));
  auto l = nlohmann::json::parse(llama4_scout);
  l["num_local_experts"] = 16;  // at the top level instead of text_config
  CHECK_THROWS_WITH(moe::model_config::from_json(l), Catch::Contains("parameter 'num_local_experts' must be a MoE key this reader knows"));
  l = nlohmann::json::parse(llama4_scout);
  l["text_config"]["model_type"] = "llama4_vision_model";
  CHECK_THROWS_WITH(moe::model_config::from_json(l), Catch::Contains("parameter 'text_config.model_type' must be llama4_text, got llama4_vision_model"));
  auto d = nlohmann::json::parse(dbrx_instruct);
  d["moe_top_k"] = 4;  // DBRX's keys live in ffn_config
  CHECK_THROWS_WITH(moe::model_config::from_json(d), Catch::Contains("parameter 'moe_top_k' must be a MoE key this reader knows"));

  // Wrong JSON types name the field and the type found.
  auto g = nlohmann::json::parse(glm45_air);
  g["n_routed_experts"] = 128.0;
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'n_routed_experts' must be an integer, got number"));
  g["n_routed_experts"] = 128;
  g["norm_topk_prob"] = "true";
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'norm_topk_prob' must be a bool, got string"));
  g["norm_topk_prob"] = true;
  g["routed_scaling_factor"] = "2.5";
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'routed_scaling_factor' must be a number, got string"));
  g["routed_scaling_factor"] = 0.0;
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'routed_scaling_factor' must be finite and > 0, got 0"));
  g["routed_scaling_factor"] = 1.0;
  g["router_aux_loss_coef"] = "0.001";
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'router_aux_loss_coef' must be a number or a bool, got string"));
  g["router_aux_loss_coef"] = 0.001;

  // Counts out of range name the field, the range and the value.
  g["n_group"] = 3;  // does not divide 128
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'n_group' must be a divisor of 128, got 3"));
  g["n_group"] = 8;
  g["topk_group"] = 9;
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'topk_group' must be in [1, 8], got 9"));
  g["topk_group"] = 4;
  CHECK(moe::model_config::from_json(g).group_limited().n_groups == 8);
  g["first_k_dense_replace"] = 47;
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'first_k_dense_replace' must be in [0, 46], got 47"));
  g["first_k_dense_replace"] = 1;
  g["num_experts"] = 160;  // an alias of n_routed_experts that disagrees
  CHECK_THROWS_WITH(moe::model_config::from_json(g), Catch::Contains("parameter 'num_experts' must be equal to 'n_routed_experts' = 128 (aliases must agree), got 160"));
  auto e = nlohmann::json::parse(ernie45_21b);
  e["moe_num_experts"] = 0;
  CHECK_THROWS_WITH(moe::model_config::from_json(e), Catch::Contains("parameter 'moe_num_experts' must be in [1, 1048576], got 0"));
  e["moe_num_experts"] = 64;
  e["moe_num_shared_experts"] = -2;
  CHECK_THROWS_WITH(moe::model_config::from_json(e), Catch::Contains("parameter 'moe_num_shared_experts' must be in [0, 1024], got -2"));
  auto m = nlohmann::json::parse(minimax_m1);
  m["num_hidden_layers"] = 0;
  CHECK_THROWS_WITH(moe::model_config::from_json(m), Catch::Contains("parameter 'num_hidden_layers' must be in [1, 1048576], got 0"));
  auto c = nlohmann::json::parse(longcat_flash);
  c.erase("num_layers");  // LongCat counts its layers in num_layers
  CHECK_THROWS_WITH(moe::model_config::from_json(c), Catch::Contains("parameter 'num_layers' must be present (or an alias), got missing"));
}

}  // namespace
