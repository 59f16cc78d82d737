// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/io/routes.hpp (docs/routing-spec.md §19.2): recordings written to
// safetensors and read back hold the same bits; a layer replayed from the file reproduces the
// captured output bitwise; every check of the reader on hostile files.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <moe/device/serial.hpp>
#include <moe/io/routes.hpp>
#include <moe/io/safetensors.hpp>
#include <moe/layer.hpp>
#include <moe/routing/recording.hpp>
#include <moe/routing/routers/top_k.hpp>
#include <moe/routing/wrappers/forced_routes.hpp>

#include "../support/compare.hpp"
#include "../support/layers.hpp"
#include "../support/policies.hpp"
#include "../support/random.hpp"

namespace {  // test cases live in an anonymous namespace so `index` is moe::index
using moe::index;
using Catch::Matchers::Contains;

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

bool same_recording(const moe::route_recording& a, const moe::route_recording& b) {
  if (a.num_tokens() != b.num_tokens() || a.num_layers() != b.num_layers() || a.k() != b.k() ||
      a.num_experts() != b.num_experts() || a.has_weights() != b.has_weights()) {
    return false;
  }
  for (index l = 0; l < a.num_layers(); ++l) {
    if (a.recorded(l) != b.recorded(l)) return false;
  }
  const auto ia = a.ids(), ib = b.ids();
  const auto wa = a.weights(), wb = b.weights();
  return std::equal(ia.begin(), ia.end(), ib.begin()) && wa.size() == wb.size() &&
         (wa.empty() || std::memcmp(wa.data(), wb.data(), wa.size() * sizeof(float)) == 0);
}

// A recording of T tokens, 3 layers (layer 1 never recorded), k = 2, over E = 6 experts.
moe::route_recording sample(bool with_weights, index T = 7) {
  moe_test::rng rng(1920);
  const moe::top_k<> router(rng.matrix(6, 10), {.k = 2, .renormalize = true});
  moe::route_recording rec(T, 3, 2, with_weights);
  rec.record(0, moe_test::route(router, rng.matrix(T, 10)));
  rec.record(2, moe_test::route(router, rng.matrix(T, 10)));
  return rec;
}

TEST_CASE("routes: a recording written to safetensors reads back with the same bits", "[io][routes]") {
  const auto dir = std::filesystem::temp_directory_path() / "moe_routes_test";
  std::filesystem::create_directories(dir);
  for (const bool with_weights : {false, true}) {
    INFO("with_weights = " << with_weights);
    const auto rec = sample(with_weights);
    const auto path = (dir / "routes.safetensors").string();
    moe::io::write_routes(path, rec);
    const auto back = moe::io::read_routes(path);
    CHECK(same_recording(rec, back));
    CHECK(back.num_experts() == 6);
    CHECK(!back.recorded(1));
    CHECK(same_recording(rec, moe::io::read_routes(path, 6)));
    // The file as documented: tensor names, dtypes, shapes, metadata.
    const moe::io::safetensors_file f(path);
    CHECK(f.metadata().at("format") == "moe.routes");
    CHECK(f.metadata().at("format_version") == "1");
    CHECK(f.metadata().at("tokens") == "7");
    CHECK(f.metadata().at("layers") == "3");
    CHECK(f.metadata().at("k") == "2");
    CHECK(f.metadata().at("experts") == "6");
    CHECK(f.metadata().at("recorded") == "101");
    CHECK(f.tensor("routed_experts").dtype == "I16");
    CHECK(f.tensor("routed_experts").shape == std::vector<std::uint64_t>{7, 3, 2});
    CHECK(f.has("routed_weights") == with_weights);
  }
  // No tokens at all.
  const auto empty = sample(true, 0);
  CHECK(same_recording(empty, moe::io::read_routes(as_bytes(moe::io::routes_bytes(empty)))));
}

TEST_CASE("routes: a layer replayed from a recording file reproduces the captured output bitwise", "[io][routes][replay]") {
  moe_test::rng rng(1921);
  const index E = 16, d = 32, f = 16, T = 45;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto router_w = rng.matrix(E, d);
  const auto x = rng.matrix(T, d);
  using bank = moe::swiglu_experts<float>;
  const moe::top_k_options o{.k = 4, .renormalize = true};
  moe::layer<moe::top_k<>, bank, moe::device::serial> captured(moe::top_k<>(router_w, o), moe_test::make_bank(w));
  moe::row_matrix<float> y1(T, d), y2(T, d);
  captured.forward(x, y1);
  moe::route_recorder rec(T, 1, 4);
  rec.record(0, captured.plan());
  const auto path = (std::filesystem::temp_directory_path() / "moe_routes_replay.safetensors").string();
  moe::io::write_routes(path, rec);
  const auto back = moe::io::read_routes(path, E);
  moe::layer<moe::forced_routes<>, bank, moe::device::serial> replayed(moe::forced_routes<>(moe::top_k<>(router_w, o), back, 0),
                                                                        moe_test::make_bank(w));
  replayed.forward(x, y2);
  CHECK(moe_test::bitwise_equal(y1, y2));
}

// A recording file built tensor by tensor, for the hostile cases.
struct file_parts {
  std::map<std::string, std::string> metadata = {{"format", "moe.routes"}, {"format_version", "1"}, {"tokens", "2"},
                                                 {"layers", "1"},          {"k", "2"},              {"experts", "4"},
                                                 {"recorded", "1"}};
  std::string ids_dtype = "I16";
  std::vector<std::uint64_t> ids_shape = {2, 1, 2};
  std::vector<std::int16_t> ids = {0, 3, -1, 2};
  bool weights = true;
  std::string weights_dtype = "F32";
  std::vector<std::uint64_t> weights_shape = {2, 1, 2};
  std::vector<float> weight_values = {0.5f, 0.5f, 0.0f, 1.0f};
  bool with_ids = true;
  std::string extra;  // the name of a tensor no recording has

  [[nodiscard]] std::string bytes() const {
    moe::io::safetensors_writer wr;
    for (const auto& [key, value] : metadata) wr.metadata(key, value);
    if (with_ids) {
      std::vector<std::byte> b(ids.size() * sizeof(std::int16_t));
      if (!b.empty()) std::memcpy(b.data(), ids.data(), b.size());
      std::size_t need = 2;
      for (const auto v : ids_shape) need *= v;
      if (ids_dtype == "I32" || ids_dtype == "F32") need *= 2;
      b.resize(need);
      wr.add("routed_experts", ids_dtype, ids_shape, b);
    }
    if (weights) {
      std::vector<std::byte> b(weight_values.size() * sizeof(float));
      std::memcpy(b.data(), weight_values.data(), b.size());
      std::size_t need = weights_dtype == "F32" ? 4 : 2;
      for (const auto v : weights_shape) need *= v;
      b.resize(need);
      wr.add("routed_weights", weights_dtype, weights_shape, b);
    }
    if (!extra.empty()) wr.add(extra, "F32", {1}, std::vector<std::byte>(4));
    return wr.bytes();
  }
};

TEST_CASE("routes: hostile recording files give errors naming the field, the expected and the actual value", "[io][routes][errors]") {
  const auto read = [](const file_parts& p, index experts = 0) {
    const std::string b = p.bytes();
    return moe::io::read_routes(as_bytes(b), experts);
  };
  // The sample is good.
  const file_parts good;
  const auto r = read(good);
  CHECK(r.expert(0, 0, 1) == 3);
  CHECK(r.weight(1, 0, 1) == 1.0f);
  const auto fails = [&](const file_parts& p, const std::string& message, index experts = 0) {
    INFO(message);
    CHECK_THROWS_WITH(read(p, experts), Contains("moe::io::read_routes") && Contains(message));
  };
  {  // metadata
    file_parts p;
    p.metadata.erase("k");
    fails(p, "parameter '__metadata__.k' must be present, got missing");
    p = {};
    p.metadata["format"] = "pt";
    fails(p, "parameter '__metadata__.format' must be 'moe.routes', got 'pt'");
    p = {};
    p.metadata["format_version"] = "2";
    fails(p, "parameter '__metadata__.format_version' must be '1', got '2'");
    p = {};
    p.metadata["tokens"] = "-2";
    fails(p, "parameter '__metadata__.tokens' must be a decimal integer in [0, 1099511627776], got '-2'");
    p = {};
    p.metadata["layers"] = "0";
    fails(p, "parameter '__metadata__.layers' must be a decimal integer in [1, 1099511627776], got '0'");
    p = {};
    p.metadata["k"] = "2x";
    fails(p, "parameter '__metadata__.k' must be a decimal integer");
    p = {};
    p.metadata["experts"] = "99999";
    fails(p, "parameter '__metadata__.experts' must be a decimal integer in [0, 32767], got '99999'");
    p = {};
    p.metadata["recorded"] = "11";
    fails(p, "parameter '__metadata__.recorded' must be 1 characters (one per layer), got 2 characters");
    p = {};
    p.metadata["recorded"] = "y";
    fails(p, "parameter '__metadata__.recorded' must be '0' or '1' per layer, got 'y'");
    fails(good, "parameter '__metadata__.experts' must be equal to the expected expert count 8, got 4", 8);
  }
  {  // tensors
    file_parts p;
    p.with_ids = false;
    fails(p, "parameter 'routed_experts' must be present, got missing");
    p = {};
    p.ids_dtype = "I32";
    fails(p, "parameter 'routed_experts dtype' must be I16, got I32");
    p = {};
    p.ids_shape = {2, 2};
    fails(p, "parameter 'routed_experts shape' must be [2, 1, 2] (tokens, layers, k of __metadata__), got [2, 2]");
    p = {};
    p.ids_shape = {1, 1, 2};
    fails(p, "parameter 'routed_experts shape' must be [2, 1, 2] (tokens, layers, k of __metadata__), got [1, 1, 2]");
    p = {};
    p.weights_dtype = "BF16";
    fails(p, "parameter 'routed_weights dtype' must be F32, got BF16");
    p = {};
    p.weights_shape = {2, 1, 1};
    fails(p, "parameter 'routed_weights shape' must be [2, 1, 2]");
    p = {};
    p.extra = "router_logits";
    fails(p, "parameter 'tensors' must be only 'routed_experts' and 'routed_weights', got a tensor 'router_logits'");
  }
  {  // values
    file_parts p;
    p.ids[2] = 4;
    fails(p, "parameter 'expert id of token 1, layer 0, slot 0' must be in [-1, 4), got 4");
    p = {};
    p.ids[1] = -2;
    fails(p, "parameter 'expert id of token 0, layer 0, slot 1' must be in [-1, 4), got -2");
    p = {};
    p.metadata["experts"] = "0";  // E unknown to the file: the caller's bound applies
    p.ids[3] = 5;
    fails(p, "must be in [-1, 5), got 5", 5);
    CHECK(read(p).num_experts() == 0);  // and without one, ids up to 32766 pass
    p = {};
    p.metadata["recorded"] = "0";
    fails(p, "parameter 'routed_experts[0, 0, 0]' must be -1 in a layer never recorded (__metadata__.recorded), got 0");
    p = {};
    p.weight_values[1] = std::numeric_limits<float>::quiet_NaN();
    fails(p, "parameter 'routed_weights[0, 0, 1]' must be finite, got nan");
    p = {};
    p.weight_values[2] = 0.25f;
    fails(p, "parameter 'routed_weights[1, 0, 0]' must be 0 on an empty slot (id -1), got 0.25");
  }
  // A file that is not safetensors at all is the safetensors reader's error.
  CHECK_THROWS_WITH(moe::io::read_routes(as_bytes(std::string("abc"))), Contains("moe::io::safetensors: header length"));
  CHECK_THROWS_WITH(moe::io::read_routes(as_bytes(good.bytes()), -1), Contains("parameter 'experts' must be in [0, 32767] (0: the file's), got -1"));
}

}  // namespace
