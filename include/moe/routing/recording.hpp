// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Routed-expert capture (docs/routing-spec.md §19): the expert ids every token chose, per layer
// and slot, as compact int16 ids in the layout `[tokens × layers × k]`, with the combine weights
// optionally (fp32, same layout). moe::forced_routes replays one layer of a recording;
// <moe/io/routes.hpp> writes and reads recordings as safetensors files.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"

namespace moe {

/// The expert ids (and optionally the combine weights) of every token, layer and slot of one
/// forward, as a routing plan held them (docs/routing-spec.md §19).
///
/// Layout: `ids()` is `[tokens × layers × k]` row-major int16 (token-major, then layer, then
/// slot), the layout of vLLM's routed-experts capture; `weights()` the same layout in fp32 when
/// the recording keeps weights. An empty slot is stored as id `-1` (`moe::no_expert`) with weight
/// 0: a slot beyond the token's own k, a null expert, an assignment a capacity limit dropped, and
/// every slot of a token the layer skipped (`passes(t) == 0`). A slot whose weight is exactly 0
/// keeps its expert id, as the plan does. Slots keep the plan's order (best first for top-k
/// policies), which replay preserves.
///
/// A layer that was never recorded holds `-1` everywhere and `recorded(l)` is false.
class route_recording {
 public:
  /// The largest expert count an int16 id can name: ids are in `[0, 32767)`.
  static constexpr index max_experts = std::numeric_limits<std::int16_t>::max();

  route_recording() = default;

  /// An empty recording of `tokens × layers × k` slots (every id -1, no layer recorded), with
  /// fp32 weights when `with_weights`. `experts` is the expert count E when known (0: unknown;
  /// the first record() sets it).
  route_recording(index tokens, index layers, index k, bool with_weights = false, index experts = 0) {
    constexpr const char* where = "moe::route_recording";
    if (tokens < 0) detail::fail_parameter(error_id::config, where, "tokens", ">= 0", tokens);
    if (layers < 1) detail::fail_parameter(error_id::config, where, "layers", ">= 1", layers);
    if (k < 1) detail::fail_parameter(error_id::config, where, "k", ">= 1", k);
    detail::check_range<index>(where, "experts", experts, 0, max_experts);
    if (tokens > std::numeric_limits<index>::max() / layers / k) {
      detail::fail_parameter(error_id::config, where, "tokens × layers × k", "representable", "an overflow");
    }
    m_tokens = tokens;
    m_layers = layers;
    m_k = k;
    m_experts = experts;
    const auto n = static_cast<std::size_t>(tokens * layers * k);
    m_ids.assign(n, static_cast<std::int16_t>(no_expert));
    m_has_weights = with_weights;
    if (with_weights) m_weights.assign(n, 0.0f);
    m_recorded.assign(static_cast<std::size_t>(layers), std::uint8_t{0});
  }

  /// Tokens of the recorded forward.
  [[nodiscard]] index num_tokens() const noexcept { return m_tokens; }
  /// Layers the recording has room for (recorded or not).
  [[nodiscard]] index num_layers() const noexcept { return m_layers; }
  /// Slots per token and layer.
  [[nodiscard]] index k() const noexcept { return m_k; }
  /// The expert count E of the recorded plans, or 0 if unknown.
  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  /// Whether the recording keeps the combine weights.
  [[nodiscard]] bool has_weights() const noexcept { return m_has_weights; }
  /// Whether layer l was recorded (record() or set_recorded()).
  [[nodiscard]] bool recorded(index l) const noexcept {
    return l >= 0 && l < m_layers && m_recorded[static_cast<std::size_t>(l)] != 0;
  }

  /// Expert id of slot s of token t in layer l, or -1 (moe::no_expert) for an empty slot.
  [[nodiscard]] std::int32_t expert(index t, index l, index s) const noexcept { return m_ids[at(t, l, s)]; }
  /// Combine weight of slot s of token t in layer l (0 without weights).
  [[nodiscard]] float weight(index t, index l, index s) const noexcept {
    return !m_has_weights ? 0.0f : m_weights[at(t, l, s)];
  }

  /// All ids, `[tokens × layers × k]` row-major.
  [[nodiscard]] std::span<const std::int16_t> ids() const noexcept { return m_ids; }
  [[nodiscard]] std::span<std::int16_t> ids() noexcept { return m_ids; }
  /// All weights, `[tokens × layers × k]` row-major; empty without weights.
  [[nodiscard]] std::span<const float> weights() const noexcept { return m_weights; }
  [[nodiscard]] std::span<float> weights() noexcept { return m_weights; }

  /// Marks layer l recorded (or not), for data written through ids() / weights().
  void set_recorded(index l, bool on = true) {
    detail::check_range<index>("moe::route_recording::set_recorded", "layer", l, 0, m_layers - 1);
    m_recorded[static_cast<std::size_t>(l)] = on ? 1 : 0;
  }
  /// Sets the expert count E (0: unknown), checked against every recorded id.
  void set_num_experts(index experts) {
    constexpr const char* where = "moe::route_recording::set_num_experts";
    detail::check_range<index>(where, "experts", experts, 0, max_experts);
    if (experts > 0) check_ids(where, experts);
    m_experts = experts;
  }

  /// Records layer l from `plan`, the plan of that layer's forward over the recording's tokens:
  /// slot s of token t becomes `plan.expert(t, s)` (and its weight), slots beyond the plan's
  /// max_slots() and every slot of a skipped token (`passes(t) == 0`) become -1. Recording a
  /// layer again overwrites it.
  ///
  /// Throws moe::error if the plan's token count differs from num_tokens(), its max_slots()
  /// exceeds k(), its expert count exceeds max_experts or differs from a known num_experts(), or
  /// l is out of range. Repeat passes, output scales and identity weights are not recorded.
  void record(index l, const routing_plan& plan) {
    constexpr const char* where = "moe::route_recording::record";
    detail::check_range<index>(where, "layer", l, 0, m_layers - 1);
    detail::check_extent(where, "plan.num_tokens()", plan.num_tokens(), m_tokens);
    if (plan.max_slots() > m_k) {
      detail::fail_parameter(error_id::shape, where, "plan.max_slots()", detail::concat("<= k = ", m_k), plan.max_slots());
    }
    const index E = plan.num_experts();
    if (E > max_experts) {
      detail::fail_parameter(error_id::config, where, "plan.num_experts()",
                             detail::concat("<= ", max_experts, " (int16 ids)"), E);
    }
    if (m_experts > 0 && E != m_experts) detail::check_extent(where, "plan.num_experts()", E, m_experts);
    const index K = plan.max_slots();
    for (index t = 0; t < m_tokens; ++t) {  // validate first, so that a bad plan leaves the layer as it was
      for (index s = 0; s < K; ++s) {
        const std::int32_t e = plan.expert(t, s);
        if (e != no_expert && (e < 0 || e >= E)) {
          detail::fail_parameter(error_id::plan, where, detail::concat("plan.expert(", t, ", ", s, ")"),
                                 detail::concat("in [0, ", E, ") or moe::no_expert"), e);
        }
      }
    }
    for (index t = 0; t < m_tokens; ++t) {
      const bool skipped = plan.passes(t) == 0;
      for (index s = 0; s < m_k; ++s) {
        const bool empty = skipped || s >= K || plan.expert(t, s) == no_expert;
        m_ids[at(t, l, s)] = static_cast<std::int16_t>(empty ? no_expert : plan.expert(t, s));
        if (m_has_weights) m_weights[at(t, l, s)] = empty ? 0.0f : plan.weight(t, s);
      }
    }
    m_experts = E;
    m_recorded[static_cast<std::size_t>(l)] = 1;
  }

  /// Checks every id against `[-1, experts)` (experts > 0), naming the first bad one by token,
  /// layer and slot; `where` names the caller.
  void check_ids(std::string_view where, index experts) const {
    for (std::size_t i = 0; i < m_ids.size(); ++i) {
      const std::int32_t e = m_ids[i];
      if (e >= -1 && e < experts) continue;
      const auto slot = static_cast<index>(i);
      detail::fail_parameter(error_id::input, where,
                             detail::concat("expert id of token ", slot / (m_layers * m_k), ", layer ",
                                            slot / m_k % m_layers, ", slot ", slot % m_k),
                             detail::concat("in [-1, ", experts, ")"), e);
    }
  }

 private:
  [[nodiscard]] std::size_t at(index t, index l, index s) const noexcept {
    MOE_ASSERT(t >= 0 && t < m_tokens && l >= 0 && l < m_layers && s >= 0 && s < m_k);
    return static_cast<std::size_t>((t * m_layers + l) * m_k + s);
  }

  index m_tokens = 0;
  index m_layers = 0;
  index m_k = 0;
  index m_experts = 0;
  bool m_has_weights = false;
  std::vector<std::int16_t> m_ids;     // [tokens × layers × k]
  std::vector<float> m_weights;        // [tokens × layers × k], or empty
  std::vector<std::uint8_t> m_recorded;  // [layers]
};

/// The same type, named for its use while a forward runs: `moe::route_recorder rec(T, L, k,
/// true); rec.record(l, layer.plan());`.
using route_recorder = route_recording;

}  // namespace moe
