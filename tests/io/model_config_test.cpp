// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/model_config.hpp: each published config.json of tests/data/hf-configs
// (sources and checksums in its SOURCES.md) gives the routing fields its model's reference code
// uses, field by field; aliases that disagree, unknown MoE keys and unknown families are errors.
#include <catch2/catch.hpp>

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
