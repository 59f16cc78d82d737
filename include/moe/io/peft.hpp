// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// LoRA-expert banks (moe::lora_experts) from PEFT-style adapter files: a safetensors file
// (`adapter_model.safetensors`) and its `adapter_config.json`. Needs nlohmann-json.
//
// Config: `r` (integer >= 1) and `lora_alpha` (finite number) are required; `use_rslora`
// (scale α/√r), `target_modules` (a list of module names, matched as PEFT does: the module's
// name or its last dotted components; a string: a regular expression the whole module name
// must match, or "all-linear"), `rank_pattern` / `alpha_pattern` (per-module r and α, keys
// matched as PEFT does: `(.*\.)?key` against the whole module name) and `num_experts`
// (MoE-PEFT / MixLoRA / DynMoLE) are read when present; `use_dora: true` is refused (DoRA's
// magnitude vector is not a LoRA expert). Other keys are ignored.
//
// Tensors of one module (the caller names it: `base_model.model.model.layers.3.mlp.down_proj`),
// in one of two layouts, never both:
//   1. stacked: `<module>.lora_A.weight [E·r × d]` and `<module>.lora_B.weight [E·d × r]` (E = 1
//      is a plain PEFT LoRA adapter: one expert);
//   2. one pair per expert, MoE-PEFT's names (MixLoRA, DynMoLE): `<module>.experts.<e>.lora_A.weight
//      [r × d]` and `<module>.experts.<e>.lora_B.weight [d × r]` for e = 0 .. E−1, no gap;
// plus, optionally, the router `<module>.moe_gate.weight [E × d]` (peft_router_weights()).
// Dtypes F32, BF16 and F16, converted to fp32. Any other tensor whose name starts with
// `<module>.` (a DoRA magnitude, a bias, PEFT's in-memory `lora_A.<adapter>.weight`) is an
// error naming it; tensors of other modules are ignored. Every failure is a moe::error naming
// the file's field or tensor, the expected and the actual value.

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/f16.hpp"
#include "moe/core/views.hpp"
#include "moe/experts/lora.hpp"
#include "moe/io/safetensors.hpp"

namespace moe::io {

/// The fields of a PEFT `adapter_config.json` that a LoRA-expert bank needs.
struct peft_config {
  index r = 0;              ///< `r`
  double lora_alpha = 0.0;  ///< `lora_alpha`
  bool use_rslora = false;  ///< `use_rslora`: scale α/√r
  /// `target_modules` as a list (empty with has_targets: nothing is targeted).
  std::vector<std::string> target_modules;
  /// `target_modules` as a string: a regular expression over whole module names, or "all-linear".
  std::string target_regex;
  bool has_targets = false;  ///< whether the config gives target_modules
  std::map<std::string, index> rank_pattern;    ///< `rank_pattern`
  std::map<std::string, double> alpha_pattern;  ///< `alpha_pattern`
  index num_experts = 0;                        ///< `num_experts` (MoE-PEFT), 0 when absent

  /// Parses the text of an adapter_config.json; `source` names it in errors.
  static peft_config parse(std::string_view text, std::string_view source = "adapter_config.json") {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text.begin(), text.end());
    } catch (const nlohmann::json::exception& e) {
      fail(source, moe::detail::concat("is not valid JSON: ", e.what()));
    }
    return from_json(j, source);
  }

  /// Reads an adapter_config.json.
  static peft_config from_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::peft_config: cannot open '", path, "'"));
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return parse(text, path);
  }

  static peft_config from_json(const nlohmann::json& j, std::string_view source = "adapter_config.json") {
    if (!j.is_object()) fail(source, moe::detail::concat("must be a JSON object, got ", j.type_name()));
    peft_config c;
    c.r = rank_of(j, "r", source);
    if (!j.contains("lora_alpha")) fail(source, "has no field 'lora_alpha'");
    c.lora_alpha = alpha_of(j["lora_alpha"], "lora_alpha", source);
    if (j.contains("use_rslora") && !j["use_rslora"].is_null()) {
      if (!j["use_rslora"].is_boolean()) field(source, "use_rslora", "a boolean", j["use_rslora"].type_name());
      c.use_rslora = j["use_rslora"].get<bool>();
    }
    if (j.contains("use_dora") && j["use_dora"].is_boolean() && j["use_dora"].get<bool>()) {
      field(source, "use_dora", "false (DoRA adapters are not LoRA experts)", "true");
    }
    if (j.contains("target_modules") && !j["target_modules"].is_null()) {
      const auto& t = j["target_modules"];
      c.has_targets = true;
      if (t.is_string()) {
        c.target_regex = t.get<std::string>();
      } else if (t.is_array()) {
        for (const auto& m : t) {
          if (!m.is_string()) field(source, "target_modules", "a list of strings", moe::detail::concat("an element of type ", m.type_name()));
          c.target_modules.push_back(m.get<std::string>());
        }
      } else {
        field(source, "target_modules", "a list of strings or a string", t.type_name());
      }
    }
    for (const char* name : {"rank_pattern", "alpha_pattern"}) {
      if (!j.contains(name) || j[name].is_null()) continue;
      const auto& p = j[name];
      if (!p.is_object()) field(source, name, "an object", p.type_name());
      for (const auto& [key, value] : p.items()) {
        const std::string label = moe::detail::concat(name, ".", key);
        if (name[0] == 'r') {
          c.rank_pattern[key] = rank_value(value, label, source);
        } else {
          c.alpha_pattern[key] = alpha_of(value, label, source);
        }
      }
    }
    if (j.contains("num_experts") && !j["num_experts"].is_null()) c.num_experts = rank_of(j, "num_experts", source);
    return c;
  }

  /// Whether `module` is one of target_modules (PEFT's rule: the whole name, or its last dotted
  /// components; a string: a full regular-expression match or "all-linear"). True when the
  /// config gives no target_modules.
  [[nodiscard]] bool targets(std::string_view module) const {
    if (!has_targets) return true;
    if (!target_modules.empty() || target_regex.empty()) {
      for (const auto& t : target_modules) {
        if (module == t) return true;
        if (module.size() > t.size() && module.ends_with(t) && module[module.size() - t.size() - 1] == '.') return true;
      }
      return false;
    }
    if (target_regex == "all-linear") return true;
    try {
      return std::regex_match(std::string(module), std::regex(target_regex));
    } catch (const std::regex_error& e) {
      field("adapter_config.json", "target_modules", "a valid regular expression", moe::detail::concat("'", target_regex, "' (", e.what(), ")"));
    }
  }

  /// r, α and rsLoRA for `module` (rank_pattern and alpha_pattern applied).
  [[nodiscard]] lora_config lora(std::string_view module) const {
    lora_config c{r, lora_alpha, use_rslora};
    if (const auto* v = pattern(rank_pattern, module)) c.rank = *v;
    if (const auto* v = pattern(alpha_pattern, module)) c.alpha = *v;
    return c;
  }

 private:
  template <class V>
  static const V* pattern(const std::map<std::string, V>& p, std::string_view module) {
    for (const auto& [key, value] : p) {
      try {
        if (std::regex_match(std::string(module), std::regex("(.*\\.)?(" + key + ")"))) return &value;
      } catch (const std::regex_error&) {
        if (module == key) return &value;
      }
    }
    return nullptr;
  }
  [[noreturn]] static void fail(std::string_view source, const std::string& what) {
    moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::peft_config: '", source, "' ", what));
  }
  template <class Actual>
  [[noreturn]] static void field(std::string_view source, std::string_view name, std::string_view expected, const Actual& actual) {
    moe::detail::fail_parameter(error_id::config, moe::detail::concat("moe::io::peft_config ('", source, "')"), name, expected, actual);
  }
  static index rank_value(const nlohmann::json& v, std::string_view name, std::string_view source) {
    if (!v.is_number_integer()) field(source, name, "an integer", v.type_name());
    const auto n = v.get<std::int64_t>();
    if (n < 1 || n > (std::int64_t{1} << 24)) field(source, name, "in [1, 16777216]", n);
    return static_cast<index>(n);
  }
  static index rank_of(const nlohmann::json& j, const char* name, std::string_view source) {
    if (!j.contains(name)) fail(source, moe::detail::concat("has no field '", name, "'"));
    return rank_value(j[name], name, source);
  }
  static double alpha_of(const nlohmann::json& v, std::string_view name, std::string_view source) {
    if (!v.is_number()) field(source, name, "a number", v.type_name());
    const double a = v.get<double>();
    if (!std::isfinite(a)) field(source, name, "finite", a);
    return a;
  }
};

namespace detail_peft {

// A 2-D tensor of the file converted to fp32, row-major.
struct matrix_f32 {
  std::vector<float> data;
  index rows = 0, cols = 0;
};

inline matrix_f32 read_matrix(const safetensors_file& file, const safetensors_tensor& t) {
  constexpr const char* where = "moe::io::load_lora_experts";
  if (t.shape.size() != 2) {
    moe::detail::fail_parameter(error_id::shape, where, moe::detail::concat(t.name, " rank"), "2", t.shape.size());
  }
  matrix_f32 m;
  m.rows = static_cast<index>(t.shape[0]);
  m.cols = static_cast<index>(t.shape[1]);
  const auto bytes = file.data(t);
  const auto n = static_cast<std::size_t>(m.rows) * static_cast<std::size_t>(m.cols);
  m.data.resize(n);
  if (t.dtype == "F32") {
    std::memcpy(m.data.data(), bytes.data(), n * sizeof(float));
  } else if (t.dtype == "BF16" || t.dtype == "F16") {
    const bool brain = t.dtype == "BF16";
    for (std::size_t i = 0; i < n; ++i) {
      std::uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      m.data[i] = brain ? static_cast<float>(std::bit_cast<bf16>(h)) : f16::to_float(h);
    }
  } else {
    moe::detail::fail_parameter(error_id::input, where, moe::detail::concat(t.name, " dtype"), "F32, BF16 or F16", t.dtype);
  }
  return m;
}

// The tensors of `module` in the file, sorted into the accepted names.
struct module_tensors {
  const safetensors_tensor* a = nullptr;  // stacked
  const safetensors_tensor* b = nullptr;
  std::map<index, const safetensors_tensor*> ea, eb;  // per expert
  const safetensors_tensor* gate = nullptr;
};

inline module_tensors find_module(const safetensors_file& file, std::string_view module) {
  constexpr const char* where = "moe::io::load_lora_experts";
  module_tensors m;
  const std::string prefix = std::string(module) + ".";
  for (const auto& t : file.tensors()) {
    if (!t.name.starts_with(prefix)) continue;
    const std::string_view rest = std::string_view(t.name).substr(prefix.size());
    if (rest == "lora_A.weight") {
      m.a = &t;
    } else if (rest == "lora_B.weight") {
      m.b = &t;
    } else if (rest == "moe_gate.weight") {
      m.gate = &t;
    } else if (rest.starts_with("experts.")) {
      const std::string_view tail = rest.substr(8);
      const auto dot = tail.find('.');
      const std::string_view num = tail.substr(0, dot);
      const std::string_view what = dot == std::string_view::npos ? std::string_view{} : tail.substr(dot + 1);
      bool digits = !num.empty() && num.size() <= 9 && (num.size() == 1 || num[0] != '0');
      for (const char ch : num) digits = digits && ch >= '0' && ch <= '9';
      if (!digits || (what != "lora_A.weight" && what != "lora_B.weight")) {
        moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": unknown tensor '", t.name, "' (accepted: ", prefix,
                                                                      "experts.<e>.lora_A.weight / .lora_B.weight)"));
      }
      (what[5] == 'A' ? m.ea : m.eb)[static_cast<index>(std::stoll(std::string(num)))] = &t;
    } else {
      moe::detail::throw_error(error_id::input,
                               moe::detail::concat(where, ": unknown tensor '", t.name, "' (accepted under '", prefix,
                                                   "': lora_A.weight, lora_B.weight, experts.<e>.lora_A.weight, "
                                                   "experts.<e>.lora_B.weight, moe_gate.weight)"));
    }
  }
  return m;
}

}  // namespace detail_peft

/// The LoRA-expert bank of `module` from an adapter file and its config (layouts and checks at
/// the top of this header). `config.num_experts`, when given, must equal the experts found.
template <class Scalar = float>
lora_experts<Scalar> load_lora_experts(const safetensors_file& file, const peft_config& config, std::string_view module) {
  constexpr const char* where = "moe::io::load_lora_experts";
  if (!config.targets(module)) {
    moe::detail::fail_parameter(error_id::config, where, "module", "one of the config's target_modules", moe::detail::concat("'", module, "'"));
  }
  const lora_config lc = config.lora(module);
  const index r = lc.rank;
  const auto m = detail_peft::find_module(file, module);
  const bool stacked = m.a || m.b;
  const bool per_expert = !m.ea.empty() || !m.eb.empty();
  if (stacked && per_expert) {
    moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": module '", module,
                                                        "' has both stacked (lora_A.weight) and per-expert (experts.<e>.lora_A.weight) tensors"));
  }
  if (!stacked && !per_expert) {
    moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": no LoRA tensor of module '", module, "' (", module,
                                                        ".lora_A.weight or ", module, ".experts.0.lora_A.weight)"));
  }
  std::vector<float> a, b;
  index E = 0, d = 0;
  if (stacked) {
    if (!m.a) moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": missing tensor '", module, ".lora_A.weight'"));
    if (!m.b) moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": missing tensor '", module, ".lora_B.weight'"));
    auto ma = detail_peft::read_matrix(file, *m.a);
    auto mb = detail_peft::read_matrix(file, *m.b);
    d = ma.cols;
    if (ma.rows < r || ma.rows % r != 0) {
      moe::detail::fail_parameter(error_id::shape, where, moe::detail::concat(m.a->name, " rows"), moe::detail::concat("a positive multiple of r = ", r),
                             ma.rows);
    }
    E = ma.rows / r;
    moe::detail::check_extent(where, moe::detail::concat(m.b->name, " rows"), mb.rows, E * d);
    moe::detail::check_extent(where, moe::detail::concat(m.b->name, " cols"), mb.cols, r);
    a = std::move(ma.data);
    b = std::move(mb.data);
  } else {
    E = static_cast<index>(std::max(m.ea.size(), m.eb.size()));
    for (index e = 0; e < E; ++e) {
      const auto ia = m.ea.find(e), ib = m.eb.find(e);
      if (ia == m.ea.end()) moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": missing tensor '", module, ".experts.", e, ".lora_A.weight'"));
      if (ib == m.eb.end()) moe::detail::throw_error(error_id::input, moe::detail::concat(where, ": missing tensor '", module, ".experts.", e, ".lora_B.weight'"));
      const auto ma = detail_peft::read_matrix(file, *ia->second);
      const auto mb = detail_peft::read_matrix(file, *ib->second);
      if (e == 0) d = ma.cols;
      moe::detail::check_extent(where, moe::detail::concat(ia->second->name, " rows"), ma.rows, r);
      moe::detail::check_extent(where, moe::detail::concat(ia->second->name, " cols"), ma.cols, d);
      moe::detail::check_extent(where, moe::detail::concat(ib->second->name, " rows"), mb.rows, d);
      moe::detail::check_extent(where, moe::detail::concat(ib->second->name, " cols"), mb.cols, r);
      a.insert(a.end(), ma.data.begin(), ma.data.end());
      b.insert(b.end(), mb.data.begin(), mb.data.end());
    }
  }
  if (config.num_experts != 0) moe::detail::check_extent(where, "num_experts (adapter_config.json)", E, config.num_experts);
  if (m.gate) {
    moe::detail::check_extent(where, moe::detail::concat(m.gate->name, " rows"), static_cast<index>(m.gate->shape.empty() ? 0 : m.gate->shape[0]), E);
  }
  return lora_experts<Scalar>(moe::map(static_cast<const float*>(a.data()), E * r, d), moe::map(static_cast<const float*>(b.data()), E * d, r), lc);
}

/// From a PEFT adapter directory: `<dir>/adapter_model.safetensors` and `<dir>/adapter_config.json`.
template <class Scalar = float>
lora_experts<Scalar> load_lora_experts(const std::string& directory, std::string_view module) {
  const safetensors_file file(directory + "/adapter_model.safetensors");
  return load_lora_experts<Scalar>(file, peft_config::from_file(directory + "/adapter_config.json"), module);
}

/// The router of `module` in a MoE-PEFT file, `<module>.moe_gate.weight [E × d]`, as fp32.
inline row_matrix<float> peft_router_weights(const safetensors_file& file, std::string_view module) {
  const auto m = detail_peft::find_module(file, module);
  if (!m.gate) moe::detail::throw_error(error_id::input, moe::detail::concat("moe::io::peft_router_weights: missing tensor '", module, ".moe_gate.weight'"));
  const auto g = detail_peft::read_matrix(file, *m.gate);
  return moe::map(static_cast<const float*>(g.data.data()), g.rows, g.cols);
}

}  // namespace moe::io
