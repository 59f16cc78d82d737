// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

/// Expert id of a slot that computes nothing: a null expert, a dropped assignment, a skipped token
/// or a slot beyond the token's own `k_t`.
inline constexpr std::int32_t no_expert = -1;

/// One row of the expert-major view: slot `slot` of token `token` and its combine weight, what a
/// dispatcher needs to compute the row and combine it at its source.
struct expert_entry {
  std::int32_t token;
  std::int32_t slot;
  float weight = 0.0f;
};

/// The routing plan: what a router produces and a device consumes.
///
/// Token-major data, `[T × K]` row-major (`K` = the router's maximum slots per token):
/// - `expert(t, s)`: the expert of slot `s` of token `t`, or `moe::no_expert`;
/// - `weight(t, s)`: its combine weight (0 where the expert is `no_expert`);
/// - `passes(t)`: how many times the layer runs for token `t` (0 = skipped, 1 = the default,
///   2 = repeated), for depth-routing policies;
/// - `output_scale(t)`: a factor on the token's whole layer output, routed and shared experts
///   (default 1; the Mixture-of-Depths router weight);
/// - `entropy(t)`: the entropy (nats) of the token's full routing distribution, when the router
///   computes one (`has_entropy()`);
/// - `top_score(t)`: the token's top-1 gate score, the score of its first choice before
///   renormalisation, route_scale and any selection bias, when the router records one
///   (`has_top_score()`; capacity's batch prioritized routing orders tokens by it);
/// - `identity_weight(t)`: the weight of the identity experts the token chose (the layer adds
///   `identity_weight(t) · x_t`; LongCat-Flash's zero-computation experts);
/// - `input_weighted()`: the combine weights multiply each expert's input (Llama 4).
///
/// The expert-major view is built from those by `build_expert_major()`, a stable counting sort:
/// `offsets()[e] .. offsets()[e+1]` index the `entries()` that expert `e` computes, in token order.
/// Devices consume only this view. A slot whose weight is exactly 0 (±0: a renormalisation
/// denominator of 0, an underflowed gate) contributes nothing and computes nothing: it keeps its
/// expert id in the token-major data (what the router chose) but has no entry, so `load(e)` counts
/// the rows expert `e` computes (docs/routing-spec.md §1.2).
class routing_plan {
 public:
  routing_plan() = default;

  /// Prepares an empty plan for `tokens × slots` assignments over `experts` experts: every slot is
  /// `no_expert` with weight 0, every token has one pass. Keeps the allocated capacity.
  void reset(index tokens, index slots, index experts) {
    MOE_EXPECTS(tokens >= 0 && slots >= 0 && experts >= 0);
    m_tokens = tokens;
    m_slots = slots;
    m_experts = experts;
    const auto n = static_cast<std::size_t>(tokens * slots);
    m_expert.assign(n, no_expert);
    m_weight.assign(n, 0.0f);
    m_passes.assign(static_cast<std::size_t>(tokens), std::uint8_t{1});
    m_entropy.assign(static_cast<std::size_t>(tokens), 0.0f);
    m_has_entropy = false;
    m_top_score.assign(static_cast<std::size_t>(tokens), 0.0f);
    m_has_top_score = false;
    m_output_scale.assign(static_cast<std::size_t>(tokens), 1.0f);
    m_has_output_scale = false;
    m_identity.assign(static_cast<std::size_t>(tokens), 0.0f);
    m_has_identity = false;
    m_input_weighted = false;
    m_dropped = 0;
    m_offsets.assign(static_cast<std::size_t>(experts + 1), 0);
    m_entries.clear();
    m_expert_major_valid = false;
  }

  [[nodiscard]] index num_tokens() const noexcept { return m_tokens; }
  [[nodiscard]] index max_slots() const noexcept { return m_slots; }
  [[nodiscard]] index num_experts() const noexcept { return m_experts; }

  /// Expert of slot `s` of token `t` (`moe::no_expert` if the slot computes nothing).
  [[nodiscard]] std::int32_t expert(index t, index s) const noexcept { return m_expert[at(t, s)]; }
  /// Combine weight of slot `s` of token `t`.
  [[nodiscard]] float weight(index t, index s) const noexcept { return m_weight[at(t, s)]; }
  /// Sets slot `s` of token `t`; invalidates the expert-major view.
  void set(index t, index s, std::int32_t expert, float weight) noexcept {
    m_expert[at(t, s)] = expert;
    m_weight[at(t, s)] = expert == no_expert ? 0.0f : weight;
    m_expert_major_valid = false;
  }

  /// The `K` expert ids of token `t` (mutable; call `invalidate()` after writing through it).
  [[nodiscard]] std::span<std::int32_t> experts(index t) noexcept {
    return {m_expert.data() + at(t, 0), static_cast<std::size_t>(m_slots)};
  }
  [[nodiscard]] std::span<const std::int32_t> experts(index t) const noexcept {
    return {m_expert.data() + at(t, 0), static_cast<std::size_t>(m_slots)};
  }
  /// The `K` combine weights of token `t`.
  [[nodiscard]] std::span<float> weights(index t) noexcept {
    return {m_weight.data() + at(t, 0), static_cast<std::size_t>(m_slots)};
  }
  [[nodiscard]] std::span<const float> weights(index t) const noexcept {
    return {m_weight.data() + at(t, 0), static_cast<std::size_t>(m_slots)};
  }
  /// All expert ids, `[T × K]` row-major.
  [[nodiscard]] std::span<const std::int32_t> all_experts() const noexcept { return m_expert; }
  /// All weights, `[T × K]` row-major.
  [[nodiscard]] std::span<const float> all_weights() const noexcept { return m_weight; }

  /// Number of slots of token `t` that compute something.
  [[nodiscard]] index active_slots(index t) const noexcept {
    const auto e = experts(t);
    return static_cast<index>(std::count_if(e.begin(), e.end(), [](std::int32_t x) { return x != no_expert; }));
  }

  /// Times the layer runs for token `t`: 0 (skipped), 1 (default) or 2 (repeated).
  [[nodiscard]] int passes(index t) const noexcept { return m_passes[static_cast<std::size_t>(t)]; }
  /// Sets the passes of token t; negative counts are 0, counts above 255 are 255.
  void set_passes(index t, int n) noexcept {
    m_passes[static_cast<std::size_t>(t)] = static_cast<std::uint8_t>(std::clamp(n, 0, 255));
  }

  /// Entropy (nats) of token `t`'s full routing distribution; valid when has_entropy().
  [[nodiscard]] float entropy(index t) const noexcept { return m_entropy[static_cast<std::size_t>(t)]; }
  void set_entropy(index t, float h) noexcept {
    m_entropy[static_cast<std::size_t>(t)] = h;
    m_has_entropy = true;
  }
  [[nodiscard]] bool has_entropy() const noexcept { return m_has_entropy; }
  /// The `[T]` entropies, for routers that fill them in bulk (then call mark_entropy()).
  [[nodiscard]] float* entropy_data() noexcept { return m_entropy.data(); }
  /// Declares that entropy(t) holds the routing entropy of every token.
  void mark_entropy() noexcept { m_has_entropy = true; }

  /// Top-1 gate score of token t: the gate score of its first choice (slot 0 of the router's
  /// selection, a null column included) before renormalisation, route_scale and any selection
  /// bias; 0 for a token that routes nowhere. Valid when has_top_score().
  [[nodiscard]] float top_score(index t) const noexcept { return m_top_score[static_cast<std::size_t>(t)]; }
  void set_top_score(index t, float v) noexcept {
    m_top_score[static_cast<std::size_t>(t)] = v;
    m_has_top_score = true;
  }
  /// True once the router recorded top-1 gate scores since the last reset().
  [[nodiscard]] bool has_top_score() const noexcept { return m_has_top_score; }
  /// The `[T]` top-1 gate scores, for routers that fill them in bulk (then call mark_top_score()).
  [[nodiscard]] float* top_score_data() noexcept { return m_top_score.data(); }
  /// Declares that top_score(t) holds the top-1 gate score of every token.
  void mark_top_score() noexcept { m_has_top_score = true; }

  /// Factor on the whole layer output of token t (routed and shared experts); 1 by default.
  [[nodiscard]] float output_scale(index t) const noexcept {
    return m_output_scale[static_cast<std::size_t>(t)];
  }
  void set_output_scale(index t, float s) noexcept {
    m_output_scale[static_cast<std::size_t>(t)] = s;
    m_has_output_scale = true;
  }
  /// True once set_output_scale() was called since the last reset().
  [[nodiscard]] bool has_output_scale() const noexcept { return m_has_output_scale; }

  /// The summed weight of the identity ("zero-computation") experts token t selected: the layer
  /// adds `identity_weight(t) · x_t` to the token's output (before output_scale), as LongCat-Flash's
  /// identity experts do; 0 by default. Identity experts take no slot and reach no bank.
  [[nodiscard]] float identity_weight(index t) const noexcept { return m_identity[static_cast<std::size_t>(t)]; }
  /// Adds `w` to identity_weight(t).
  void add_identity(index t, float w) noexcept {
    m_identity[static_cast<std::size_t>(t)] += w;
    m_has_identity = true;
  }
  /// True once add_identity() was called since the last reset().
  [[nodiscard]] bool has_identity() const noexcept { return m_has_identity; }

  /// Whether the combine weights multiply the experts' input instead of their output: a slot
  /// then contributes `Expert_e(w · x_t)` (Llama 4) instead of `w · Expert_e(x_t)`. Set by the
  /// router (moe::weigh_input); reset() clears it.
  [[nodiscard]] bool input_weighted() const noexcept { return m_input_weighted; }
  void set_input_weighted(bool on) noexcept { m_input_weighted = on; }

  /// Changes the expert count to `experts`, keeping every slot (a wrapper that maps some of a
  /// base router's experts elsewhere, moe::identity_experts). Slots must then name experts below
  /// `experts` or no_expert (build_expert_major() checks).
  void set_num_experts(index experts) {
    MOE_EXPECTS(experts >= 0);
    m_experts = experts;
    m_offsets.assign(static_cast<std::size_t>(experts + 1), 0);
    m_entries.clear();
    m_expert_major_valid = false;
  }

  /// Assignments that a capacity limit removed from this plan (their slots are `no_expert`);
  /// 0 unless a capacity policy ran. reset() sets it to 0.
  [[nodiscard]] index dropped() const noexcept { return m_dropped; }
  /// Adds `n` to dropped().
  void add_dropped(index n) noexcept { m_dropped += n; }

  /// Marks the expert-major view stale after writes through experts(t) / weights(t).
  void invalidate() noexcept { m_expert_major_valid = false; }

  /// Builds the expert-major view by a stable counting sort (token order is kept inside each
  /// expert); slots with weight 0 get no entry. Throws moe::error if an expert id is outside
  /// `[0, E)` and not `no_expert`.
  void build_expert_major() {
    std::fill(m_offsets.begin(), m_offsets.end(), index{0});
    for (std::size_t i = 0; i < m_expert.size(); ++i) {
      const std::int32_t e = m_expert[i];
      if (e == no_expert) continue;
      if (e < 0 || e >= m_experts) {
        const index t = static_cast<index>(i) / std::max<index>(m_slots, 1);
        detail::fail_parameter(
            error_id::plan, "moe::routing_plan::build_expert_major",
            detail::concat("expert(", t, ", ", static_cast<index>(i) - t * m_slots, ")"),
            detail::concat("in [0, ", m_experts, ") or moe::no_expert"), e);
      }
      if (m_weight[i] != 0.0f) ++m_offsets[static_cast<std::size_t>(e) + 1];
    }
    for (index e = 0; e < m_experts; ++e) m_offsets[e + 1] += m_offsets[e];
    m_entries.resize(static_cast<std::size_t>(m_offsets[m_experts]));
    m_cursor.assign(m_offsets.begin(), m_offsets.end() - 1);
    for (index t = 0; t < m_tokens; ++t) {
      for (index s = 0; s < m_slots; ++s) {
        const std::size_t i = at(t, s);
        const std::int32_t e = m_expert[i];
        if (e == no_expert || m_weight[i] == 0.0f) continue;
        m_entries[static_cast<std::size_t>(m_cursor[e]++)] = {static_cast<std::int32_t>(t),
                                                              static_cast<std::int32_t>(s), m_weight[i]};
      }
    }
    m_expert_major_valid = true;
  }

  /// True when the expert-major view matches the token-major data.
  [[nodiscard]] bool has_expert_major() const noexcept { return m_expert_major_valid; }
  /// `[E + 1]` offsets into entries(); valid after build_expert_major().
  [[nodiscard]] std::span<const index> offsets() const noexcept { return m_offsets; }
  /// Entries of all experts, grouped by expert, token order inside each group.
  [[nodiscard]] std::span<const expert_entry> entries() const noexcept { return m_entries; }
  /// Entries of expert `e`.
  [[nodiscard]] std::span<const expert_entry> entries(index e) const noexcept {
    return {m_entries.data() + m_offsets[e], static_cast<std::size_t>(m_offsets[e + 1] - m_offsets[e])};
  }
  /// Number of rows expert `e` computes.
  [[nodiscard]] index load(index e) const noexcept { return m_offsets[e + 1] - m_offsets[e]; }
  /// Total assignments that compute something (an expert and a nonzero weight).
  [[nodiscard]] index total_assignments() const noexcept { return m_offsets.empty() ? 0 : m_offsets.back(); }

 private:
  [[nodiscard]] std::size_t at(index t, index s) const noexcept {
    MOE_ASSERT(t >= 0 && t < m_tokens && s >= 0 && s < m_slots);
    return static_cast<std::size_t>(t * m_slots + s);
  }

  index m_tokens = 0;
  index m_slots = 0;
  index m_experts = 0;
  std::vector<std::int32_t> m_expert;
  std::vector<float> m_weight;
  std::vector<std::uint8_t> m_passes;
  std::vector<float> m_entropy;
  bool m_has_entropy = false;
  std::vector<float> m_top_score;
  bool m_has_top_score = false;
  std::vector<float> m_output_scale;
  bool m_has_output_scale = false;
  std::vector<float> m_identity;
  bool m_has_identity = false;
  bool m_input_weighted = false;
  index m_dropped = 0;
  std::vector<index> m_offsets{0};
  std::vector<index> m_cursor;
  std::vector<expert_entry> m_entries;
  bool m_expert_major_valid = false;
};

}  // namespace moe
