// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
//
// Helper of the moe-route tests:
//   moe_route_fixture write DIR            writes a small OLMoE-named checkpoint (2 MoE layers, d 32,
//                                          8 experts of f 16, top-2: model.safetensors + config.json),
//                                          hidden states (DIR/hidden.safetensors: hidden_states [24 x 32]
//                                          and hidden.{0,1}) and a file that is not a checkpoint
//                                          (DIR/bad/model.safetensors, with a config.json)
//   moe_route_fixture validate SCHEMA JSON checks JSON against the subset of JSON Schema that
//                                          moe-route's schema uses (type, enum, required, properties,
//                                          additionalProperties, items, minItems, minimum, maximum)
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <moe/io/checkpoint.hpp>
#include <moe/io/safetensors.hpp>

namespace {

using json = nlohmann::json;

std::vector<float> seeded(std::size_t n, float scale, std::uint64_t seed) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
    x = scale * static_cast<float>(static_cast<std::int32_t>(seed >> 32)) * 0x1p-31f;
  }
  return v;
}

// A per-expert tensor name: the family's pattern with "{e}" replaced by the expert number.
std::string expert(std::string pattern, std::uint64_t e) {
  pattern.replace(pattern.find("{e}"), 3, std::to_string(e));
  return pattern;
}

int write(const std::filesystem::path& dir) {
  const std::uint64_t d = 32, f = 16, E = 8, layers = 2;
  std::filesystem::create_directories(dir / "bad");
  const std::string config = R"({"model_type": "olmoe", "hidden_size": 32, "intermediate_size": 16,
    "num_experts": 8, "num_experts_per_tok": 2, "num_hidden_layers": 2, "norm_topk_prob": false})";
  std::ofstream(dir / "config.json") << config;
  std::ofstream(dir / "bad" / "config.json") << config;
  std::ofstream(dir / "bad" / "model.safetensors") << "this is not a safetensors file";
  moe::io::safetensors_writer w;
  std::uint64_t seed = 1;
  const auto add = [&](const std::string& name, std::uint64_t rows, std::uint64_t cols, float scale) {
    const auto m = seeded(rows * cols, scale, ++seed);
    w.add(name, "F32", {rows, cols}, std::as_bytes(std::span(m)));
  };
  for (std::uint64_t l = 0; l < layers; ++l) {
    const auto names = moe::io::hf_tensor_names("olmoe", static_cast<moe::index>(l));
    add(names.router, E, d, 0.5f);
    for (std::uint64_t e = 0; e < E; ++e) {
      add(expert(names.gate, e), f, d, 0.3f);
      add(expert(names.up, e), f, d, 0.3f);
      add(expert(names.down, e), d, f, 0.3f);
    }
  }
  w.write((dir / "model.safetensors").string());
  moe::io::safetensors_writer h;
  const std::uint64_t T = 24;
  for (const std::string name : {"hidden_states", "hidden.0", "hidden.1"}) {
    const auto m = seeded(T * d, 1.0f, ++seed);
    h.add(name, "F32", {T, d}, std::as_bytes(std::span(m)));
  }
  const auto narrow = seeded(T * 7, 1.0f, ++seed);
  h.add("narrow", "F32", {T, 7}, std::as_bytes(std::span(narrow)));
  h.write((dir / "hidden.safetensors").string());
  return 0;
}

bool is_type(const json& v, const std::string& t) {
  if (t == "object") return v.is_object();
  if (t == "array") return v.is_array();
  if (t == "string") return v.is_string();
  if (t == "boolean") return v.is_boolean();
  if (t == "null") return v.is_null();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "number") return v.is_number();
  return false;
}

// Collects the violations of `v` against `s` under `path`.
void check(const json& s, const json& v, const std::string& path, std::vector<std::string>& bad) {
  if (const auto t = s.find("type"); t != s.end()) {
    bool ok = false;
    if (t->is_string()) ok = is_type(v, t->get<std::string>());
    for (const auto& u : t->is_array() ? *t : json::array()) ok = ok || is_type(v, u.get<std::string>());
    if (!ok) {
      bad.push_back(path + ": type " + t->dump() + " expected, got " + v.dump().substr(0, 60));
      return;
    }
  }
  if (const auto e = s.find("enum"); e != s.end()) {
    bool ok = false;
    for (const auto& x : *e) ok = ok || x == v;
    if (!ok) bad.push_back(path + ": one of " + e->dump() + " expected, got " + v.dump());
  }
  if (v.is_number()) {
    if (const auto m = s.find("minimum"); m != s.end() && v.get<double>() < m->get<double>()) bad.push_back(path + ": below minimum");
    if (const auto m = s.find("maximum"); m != s.end() && v.get<double>() > m->get<double>()) bad.push_back(path + ": above maximum");
  }
  if (v.is_object()) {
    for (const auto& r : s.value("required", json::array())) {
      if (!v.contains(r.get<std::string>())) bad.push_back(path + ": required key '" + r.get<std::string>() + "' missing");
    }
    const json props = s.value("properties", json::object());
    for (const auto& [k, x] : v.items()) {
      if (const auto p = props.find(k); p != props.end()) {
        check(*p, x, path + "." + k, bad);
      } else if (const auto a = s.find("additionalProperties"); a != s.end()) {
        if (a->is_boolean() && !a->get<bool>()) bad.push_back(path + ": key '" + k + "' is not in the schema");
        if (a->is_object()) check(*a, x, path + "." + k, bad);
      }
    }
  }
  if (v.is_array()) {
    if (const auto m = s.find("minItems"); m != s.end() && v.size() < m->get<std::size_t>()) bad.push_back(path + ": too few items");
    if (const auto it = s.find("items"); it != s.end()) {
      for (std::size_t i = 0; i < v.size(); ++i) check(*it, v[i], path + "[" + std::to_string(i) + "]", bad);
    }
  }
}

int validate(const std::string& schema_path, const std::string& json_path) {
  std::ifstream sf(schema_path), jf(json_path);
  if (!sf || !jf) {
    std::cerr << "cannot open " << schema_path << " or " << json_path << "\n";
    return 1;
  }
  const json schema = json::parse(sf), doc = json::parse(jf);
  std::vector<std::string> bad;
  check(schema, doc, "$", bad);
  for (const auto& b : bad) std::cerr << json_path << ": " << b << "\n";
  if (bad.empty()) std::cout << json_path << ": valid against " << schema_path << "\n";
  return bad.empty() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "write" && argc == 3) return write(argv[2]);
    if (mode == "validate" && argc == 4) return validate(argv[2], argv[3]);
    std::cerr << "usage: moe_route_fixture write DIR | validate SCHEMA JSON\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
