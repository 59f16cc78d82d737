// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// moe-route's policies: a policy given on the command line as `name:key=value,key=value` is
// parsed into a policy_spec, checked against the registry below (unknown names and options are
// usage errors that list the valid ones) and built, per layer, into a type-erased router over
// that layer's router weight.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <moe/moe.hpp>

namespace moe_route {

using moe::index;

/// A command-line mistake: the tool prints the message and exits with status 2.
struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A policy as written on the command line.
struct policy_spec {
  std::string text;                          ///< as given, e.g. "null_experts:m=16,k=10"
  std::string name;                          ///< "null_experts"
  std::map<std::string, std::string> options;  ///< {"k": "10", "m": "16"}
};

/// What a policy is built from: one MoE layer's router and the model's routing.
struct layer_router {
  const moe::row_matrix<float>* weight = nullptr;  ///< [E × d]
  int k = 1;                                       ///< the model's experts per token
  bool renormalize = false;                        ///< the model renormalises its top-k
  index layer = 0;
  std::uint64_t seed = 0;  ///< for the parameters a checkpoint does not hold (depth router rows)
};

/// A router behind a virtual call: moe-route runs policies chosen at run time.
class routing_policy {
 public:
  virtual ~routing_policy() = default;
  virtual void route(moe::const_matrix_map<float> x, const moe::route_context& ctx, moe::routing_plan& plan,
                     moe::workspace& ws) const = 0;
  [[nodiscard]] virtual index hidden() const = 0;
  /// FLOPs of the routing itself per token (the router GEMM: 2 · columns · d, plus a depth router).
  [[nodiscard]] virtual double router_flops_per_token() const = 0;
};

template <class Router>
class erased_policy final : public routing_policy {
 public:
  erased_policy(Router r, double flops) : m_router(std::move(r)), m_flops(flops) {}
  void route(moe::const_matrix_map<float> x, const moe::route_context& ctx, moe::routing_plan& plan,
             moe::workspace& ws) const override {
    m_router.route(x, ctx, plan, ws);
  }
  [[nodiscard]] index hidden() const override { return m_router.hidden(); }
  [[nodiscard]] double router_flops_per_token() const override { return m_flops; }

 private:
  Router m_router;
  double m_flops;
};

template <class Router>
std::unique_ptr<routing_policy> erase(Router r, double flops) {
  return std::make_unique<erased_policy<Router>>(std::move(r), flops);
}

/// One option a policy takes: its name, what it means and its default (as text).
struct option_doc {
  std::string name;
  std::string help;
  std::string default_value;
};

/// A policy of the registry.
struct policy_entry {
  std::string name;
  std::string help;
  std::vector<option_doc> options;
  std::function<std::unique_ptr<routing_policy>(const layer_router&, const policy_spec&)> build;
};

namespace detail {

inline std::string valid_list(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
  return s;
}

inline double parse_number(const policy_spec& p, const std::string& key, const std::string& v) {
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty() || !std::isfinite(x)) {
    throw usage_error("policy '" + p.text + "': option '" + key + "' must be a number, got '" + v + "'");
  }
  return x;
}

/// Option `key` of `p` as a number, or `fallback` when absent.
inline double number(const policy_spec& p, const std::string& key, double fallback) {
  const auto it = p.options.find(key);
  return it == p.options.end() ? fallback : parse_number(p, key, it->second);
}

inline int integer(const policy_spec& p, const std::string& key, int fallback) {
  const double x = number(p, key, fallback);
  if (x != std::floor(x) || std::abs(x) > 1e9) {
    throw usage_error("policy '" + p.text + "': option '" + key + "' must be an integer, got '" + p.options.at(key) + "'");
  }
  return static_cast<int>(x);
}

inline bool boolean(const policy_spec& p, const std::string& key, bool fallback) {
  const auto it = p.options.find(key);
  if (it == p.options.end()) return fallback;
  if (it->second == "1" || it->second == "true") return true;
  if (it->second == "0" || it->second == "false") return false;
  throw usage_error("policy '" + p.text + "': option '" + key + "' must be 0, 1, true or false, got '" + it->second + "'");
}

inline std::string choice(const policy_spec& p, const std::string& key, const std::vector<std::string>& allowed) {
  const auto it = p.options.find(key);
  if (it == p.options.end()) return allowed.front();
  if (std::find(allowed.begin(), allowed.end(), it->second) == allowed.end()) {
    throw usage_error("policy '" + p.text + "': option '" + key + "' must be one of " + valid_list(allowed) + ", got '" +
                      it->second + "'");
  }
  return it->second;
}

inline moe::capacity_convention convention(const policy_spec& p, const char* fallback) {
  const auto it = p.options.find("convention");
  const std::string c = it == p.options.end() ? fallback : it->second;
  if (c == "gshard") return moe::capacity_convention::gshard_ceil;
  if (c == "switch") return moe::capacity_convention::switch_round;
  if (c == "floor") return moe::capacity_convention::expert_choice_floor;
  throw usage_error("policy '" + p.text + "': option 'convention' must be one of gshard, switch, floor, got '" + c + "'");
}

inline moe::top_k_options top_k_of(const layer_router& l, const policy_spec& p) {
  moe::top_k_options o;
  o.k = integer(p, "k", l.k);
  o.renormalize = boolean(p, "renormalize", l.renormalize);
  o.temperature = static_cast<float>(number(p, "temperature", 1.0));
  return o;
}

inline double gemm_flops(const layer_router& l, index columns) { return 2.0 * static_cast<double>(columns * l.weight->cols()); }

/// Seeded rows in [-1, 1) / sqrt(d) (splitmix64), for parameters a checkpoint does not hold.
inline std::vector<float> seeded_row(index n, std::uint64_t seed) {
  std::vector<float> v(static_cast<std::size_t>(n));
  const float scale = 1.0f / std::sqrt(static_cast<float>(std::max<index>(n, 1)));
  for (auto& x : v) {
    std::uint64_t z = (seed += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    x = scale * (static_cast<float>((z ^ (z >> 31)) >> 40) * 0x1.0p-23f - 1.0f);
  }
  return v;
}

}  // namespace detail

/// The policies moe-route knows, by name.
inline const std::vector<policy_entry>& registry() {
  static const std::vector<policy_entry> entries = [] {
    namespace d = detail;
    std::vector<policy_entry> r;
    const option_doc k_doc{"k", "experts per token", "the model's k"};
    const option_doc renorm_doc{"renormalize", "divide the selected weights by their sum (0/1)", "the model's"};
    const option_doc temp_doc{"temperature", "logits are divided by it", "1"};
    r.push_back({"top_k", "softmax (or sigmoid) top-k over the layer's router (moe::top_k)",
                 {k_doc, renorm_doc, temp_doc, {"gate", "softmax or sigmoid", "softmax"}},
                 [](const layer_router& l, const policy_spec& p) {
                   const auto o = d::top_k_of(l, p);
                   const double fl = d::gemm_flops(l, l.weight->rows());
                   if (d::choice(p, "gate", {"softmax", "sigmoid"}) == "sigmoid") {
                     return erase(moe::top_k<moe::sigmoid_gate>(*l.weight, o), fl);
                   }
                   return erase(moe::top_k<moe::softmax_gate>(*l.weight, o), fl);
                 }});
    r.push_back({"null_experts",
                 "AdaMoE null experts (moe::null_experts<moe::top_k<>>): m extra columns that compute nothing, "
                 "scored by zero router rows (logit 0), so a token keeps only the real experts that beat them",
                 {{"m", "null experts", "E / 4"}, {"k", "slots per token, real and null", "the model's k"}, renorm_doc, temp_doc},
                 [](const layer_router& l, const policy_spec& p) {
                   const index E = l.weight->rows();
                   const index m = d::integer(p, "m", static_cast<int>(std::max<index>(1, E / 4)));
                   if (m < 1) throw usage_error("policy '" + p.text + "': option 'm' must be >= 1, got " + std::to_string(m));
                   const moe::row_matrix<float> nulls = moe::row_matrix<float>::Zero(m, l.weight->cols());  // [m × d]
                   using router = moe::null_experts<moe::top_k<moe::softmax_gate>>;
                   return erase(router(*l.weight, nulls, d::top_k_of(l, p)), d::gemm_flops(l, E + m));
                 }});
    r.push_back({"capacity",
                 "expert capacity with token dropping over top-k (moe::capacity<moe::top_k<>>)",
                 {{"factor", "capacity factor cf", "1.25"},
                  {"convention", "gshard: ceil(cf·T·k/E), switch: round(cf·T/E), floor: floor(cf·T/E)", "gshard"},
                  {"drop", "drop assignments over capacity (0/1)", "1"},
                  k_doc, renorm_doc, temp_doc},
                 [](const layer_router& l, const policy_spec& p) {
                   moe::capacity_options c;
                   c.capacity_factor = d::number(p, "factor", 1.25);
                   c.convention = d::convention(p, "gshard");
                   c.drop_tokens = d::boolean(p, "drop", true);
                   using router = moe::capacity<moe::top_k<moe::softmax_gate>>;
                   return erase(router(moe::top_k<moe::softmax_gate>(*l.weight, d::top_k_of(l, p)), c),
                                d::gemm_flops(l, l.weight->rows()));
                 }});
    r.push_back({"expert_choice", "experts choose their top tokens (moe::expert_choice)",
                 {{"factor", "capacity factor c: k_c = floor(c·T/E)", "the model's k"},
                  {"convention", "gshard, switch or floor", "floor"}},
                 [](const layer_router& l, const policy_spec& p) {
                   moe::expert_choice_options o;
                   o.capacity_factor = d::number(p, "factor", l.k);
                   o.convention = d::convention(p, "floor");
                   o.small_batch = moe::expert_choice_fallback::token_choice;
                   o.fallback_k = l.k;
                   return erase(moe::expert_choice(*l.weight, o), d::gemm_flops(l, l.weight->rows()));
                 }});
    r.push_back({"top_p", "top-p: the fewest experts whose scores reach p (moe::top_p<softmax_gate>)",
                 {{"p", "score share to reach", "0.9"}, {"k_min", "at least", "1"}, {"k_max", "at most", "the model's k"},
                  {"renormalize", "divide the selected scores by their sum (0/1)", "the model's"}},
                 [](const layer_router& l, const policy_spec& p) {
                   moe::top_p_options o;
                   o.p = static_cast<float>(d::number(p, "p", 0.9));
                   o.k_min = d::integer(p, "k_min", 1);
                   o.k_max = d::integer(p, "k_max", l.k);
                   o.renormalize = d::boolean(p, "renormalize", l.renormalize);
                   return erase(moe::top_p<moe::softmax_gate>(*l.weight, o), d::gemm_flops(l, l.weight->rows()));
                 }});
    r.push_back({"adaptive_k", "entropy-adaptive k (moe::adaptive_k<softmax_gate>, TensorRT-LLM's rule)",
                 {{"k_min", "k of a confident token", "max(1, k / 4)"}, {"k_max", "k of an uncertain token", "the model's k"},
                  {"low", "normalised entropy below which k_min", "0.625"}, {"high", "normalised entropy from which k_max", "0.8175"},
                  {"renormalize", "divide the selected scores by their sum (0/1)", "the model's"}},
                 [](const layer_router& l, const policy_spec& p) {
                   moe::adaptive_k_options o;
                   o.k_min = d::integer(p, "k_min", std::max(1, l.k / 4));
                   o.k_max = d::integer(p, "k_max", l.k);
                   o.low = static_cast<float>(d::number(p, "low", 0.625));
                   o.high = static_cast<float>(d::number(p, "high", 0.8175));
                   o.renormalize = d::boolean(p, "renormalize", l.renormalize);
                   return erase(moe::adaptive_k<moe::softmax_gate>(*l.weight, o), d::gemm_flops(l, l.weight->rows()));
                 }});
    r.push_back({"mod",
                 "Mixture-of-Depths over top-k (moe::layer_skip<moe::top_k<>, moe::mod_capacity>): the top fraction of "
                 "the tokens by a depth router w · x enter the layer, the others skip it; w is seeded (checkpoints hold "
                 "no depth router)",
                 {{"capacity", "fraction of the tokens that enter", "0.5"},
                  {"seed", "seed of the depth router w [d]", "--seed + layer"},
                  k_doc, renorm_doc, temp_doc},
                 [](const layer_router& l, const policy_spec& p) {
                   moe::mod_options o;
                   o.capacity_fraction = d::number(p, "capacity", 0.5);
                   o.weight_transform = moe::mod_weight_transform::sigmoid;
                   const auto seed = static_cast<std::uint64_t>(d::number(p, "seed", static_cast<double>(l.seed + 1000003u * static_cast<std::uint64_t>(l.layer))));
                   const auto w = d::seeded_row(l.weight->cols(), seed);
                   using router = moe::layer_skip<moe::top_k<moe::softmax_gate>, moe::mod_capacity>;
                   return erase(router(moe::top_k<moe::softmax_gate>(*l.weight, d::top_k_of(l, p)), moe::mod_capacity(w, o)),
                                d::gemm_flops(l, l.weight->rows() + 1));
                 }});
    return r;
  }();
  return entries;
}

inline std::vector<std::string> policy_names() {
  std::vector<std::string> n;
  for (const auto& e : registry()) n.push_back(e.name);
  return n;
}

/// The registry's entry for `name`; throws usage_error listing the valid names.
inline const policy_entry& find_policy(const std::string& name, const std::string& text) {
  for (const auto& e : registry()) {
    if (e.name == name) return e;
  }
  throw usage_error("--policy '" + text + "': unknown policy '" + name + "'; valid policies: " + detail::valid_list(policy_names()));
}

/// Parses `name[:key=value[,key=value...]]` and checks the name and the option names.
inline policy_spec parse_policy(const std::string& text) {
  policy_spec p;
  p.text = text;
  const auto colon = text.find(':');
  p.name = text.substr(0, colon);
  const policy_entry& entry = find_policy(p.name, text);
  if (colon == std::string::npos) return p;
  const std::string rest = text.substr(colon + 1);
  std::size_t at = 0;
  while (at <= rest.size()) {
    const auto comma = std::min(rest.find(',', at), rest.size());
    const std::string item = rest.substr(at, comma - at);
    const auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == item.size()) {
      throw usage_error("--policy '" + text + "': option '" + item + "' must be written key=value");
    }
    const std::string key = item.substr(0, eq);
    std::vector<std::string> valid;
    for (const auto& o : entry.options) valid.push_back(o.name);
    if (std::find(valid.begin(), valid.end(), key) == valid.end()) {
      throw usage_error("--policy '" + text + "': policy '" + p.name + "' has no option '" + key +
                        "'; valid options: " + detail::valid_list(valid));
    }
    if (!p.options.emplace(key, item.substr(eq + 1)).second) {
      throw usage_error("--policy '" + text + "': option '" + key + "' given twice");
    }
    at = comma + 1;
  }
  return p;
}

/// The --help text of the policies.
inline std::string policies_help() {
  std::string s = "Policies (--policy NAME[:key=value,...], repeatable; evaluated beside the model's own router):\n";
  for (const auto& e : registry()) {
    s += "  " + e.name + ": " + e.help + "\n";
    for (const auto& o : e.options) s += "      " + o.name + "  " + o.help + " (default: " + o.default_value + ")\n";
  }
  return s;
}

}  // namespace moe_route
