// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/plan.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/recording.hpp"
#include "moe/routing/routers/token_choice.hpp"

namespace moe {

/// Where moe::forced_routes takes the combine weights of the recorded experts.
enum class replay_weights {
  live,     ///< from the live logits, by the base's gate and weigh stages (the default)
  recorded  ///< the recording's weights as they are (the recording must hold weights)
};

/// Options of moe::forced_routes.
struct forced_routes_options {
  /// Weights from the live logits (default) or from the recording.
  replay_weights weights = replay_weights::live;
};

/// Replays one layer of a moe::route_recording (docs/routing-spec.md §19): token t of the batch
/// gets the experts the recording holds for token t of layer `layer`, in their recorded slots,
/// and the combine weights are recomputed from the live logits by the base policy's own stages.
///
/// Per token: logits `z` and scores `s = gate(z)` exactly as the base computes them (its linear
/// map, temperature, soft cap and NaN policy); the recorded experts `e_1 .. e_n` of the token
/// (its non-empty slots, in slot order) take the place of the base's selection; their weights
/// are the base's `weigh_row(s, {e_1 .. e_n})`. For moe::top_k that is `p_e = gate(z)_e` over
/// all E logits (softmax or sigmoid), divided by `Σ p_e` over the recorded experts when
/// `renormalize` (with its floor and zero-denominator rule), times `route_scale`; for
/// moe::group_limited the same from its unbiased scores (the bias and the groups only select).
/// Replaying the capture of a policy whose weights are a function of the scores and the selected
/// experts (top_k, group_limited, rms_scaled_router over them) therefore gives bitwise the same
/// plan and layer output, and under changed router weights it gives the recorded experts with
/// live weights (what training on a recorded rollout needs). moe::topk_softmax is not such a
/// base: its scores come from its own top-k.
///
/// Ties play no part (nothing is selected). A recorded expert whose live logit is -inf has
/// score 0 (a softmax or sigmoid of -inf), so its slot computes nothing; a token whose logits are
/// all -inf keeps its recorded experts with weight 0. NaN logits follow the base's NaN policy (an
/// error names moe::forced_routes::route and 'x'). Empty slots (-1) stay `moe::no_expert`.
///
/// With `replay_weights::recorded` the recording's weights are copied as they are, which
/// replays any policy's plan (null experts, capacity, expert choice) bitwise; the logits are
/// still computed for the plan's entropy and top-1 scores.
///
/// Token t of the batch is token t of the recording, so the batch must have exactly
/// `num_tokens()` rows. The policy routes the rows it is given (it does not ask for the whole
/// batch): on moe::device::mpi each rank routes its own rows, so each rank replays the recording
/// of its own plans (the plan its layer.plan() holds). The base must score its experts as its columns (no null or identity
/// columns: `columns() == num_experts()`), route `max_slots() == k` slots, and have the
/// recording's expert count when the recording knows it.
///
/// @tparam Base a moe::token_choice_policy whose columns are its experts: moe::top_k<Gate>
///         (default), moe::group_limited<Gate>, moe::rms_scaled_router<...>.
template <class Base = top_k<softmax_gate>>
class forced_routes {
  static_assert(token_choice_policy<Base>,
                "moe::forced_routes<Base>: Base must model moe::token_choice_policy (its logits, gate and weigh "
                "stages are replayed); use moe::top_k, moe::group_limited or a policy of your own that exposes "
                "the stages of routing/routers/token_choice.hpp");

 public:
  using router_type = forced_routes;
  using base_type = Base;
  /// Routes the rows it is given (token t = row t of the recorded batch, which on a device that
  /// splits the batch over processes is the process's own batch).
  static constexpr bool needs_whole_batch = false;

  /// Replays layer `layer` of `recording` (its ids, and weights if asked, are copied) over the
  /// base's logits. Throws moe::error if the layer is out of range or was never recorded, the
  /// base's k or expert count differs from the recording's, an id is outside `[-1, E)`, the base
  /// has columns that are not experts, or recorded weights are asked of a recording without.
  forced_routes(Base base, const route_recording& recording, index layer, forced_routes_options options = {})
      : m_base(std::move(base)), m_options(options) {
    constexpr const char* where = "moe::forced_routes";
    const index E = m_base.num_experts();
    if (m_base.columns() != E) {
      detail::fail_parameter(error_id::config, where, "base.columns()",
                             detail::concat("equal to base.num_experts() = ", E, " (no null or identity columns)"),
                             m_base.columns());
    }
    for (index c = 0; c < E; ++c) {
      if (m_base.column_expert(c) != c) {
        detail::fail_parameter(error_id::config, where, detail::concat("base.column_expert(", c, ")"),
                               detail::concat("equal to ", c), m_base.column_expert(c));
      }
    }
    if (recording.num_layers() < 1) {
      detail::fail_parameter(error_id::config, where, "recording.num_layers()", ">= 1", recording.num_layers());
    }
    detail::check_range<index>(where, "layer", layer, 0, recording.num_layers() - 1);
    if (!recording.recorded(layer)) {
      detail::fail_parameter(error_id::config, where, "layer", "a layer the recording holds (recorded(layer))",
                             detail::concat(layer, ", never recorded"));
    }
    if (m_base.max_slots() != recording.k()) {
      detail::fail_parameter(error_id::config, where, "base.max_slots()",
                             detail::concat("equal to the recording's k = ", recording.k()), m_base.max_slots());
    }
    if (recording.num_experts() > 0 && recording.num_experts() != E) {
      detail::fail_parameter(error_id::config, where, "base.num_experts()",
                             detail::concat("equal to the recording's expert count ", recording.num_experts()), E);
    }
    if (m_options.weights == replay_weights::recorded && !recording.has_weights()) {
      detail::fail_parameter(error_id::config, where, "options.weights",
                             "replay_weights::live for a recording without weights", "replay_weights::recorded");
    }
    m_tokens = recording.num_tokens();
    m_layer = layer;
    const index k = recording.k();
    m_experts.resize(static_cast<std::size_t>(m_tokens * k));
    if (m_options.weights == replay_weights::recorded) m_weights.resize(m_experts.size());
    for (index t = 0; t < m_tokens; ++t) {
      for (index s = 0; s < k; ++s) {
        const std::int32_t e = recording.expert(t, layer, s);
        if (e < -1 || e >= E) {
          detail::fail_parameter(error_id::input, where,
                                 detail::concat("expert id of token ", t, ", layer ", layer, ", slot ", s),
                                 detail::concat("in [-1, ", E, ")"), e);
        }
        const auto i = static_cast<std::size_t>(t * k + s);
        m_experts[i] = e;
        if (!m_weights.empty()) m_weights[i] = e == no_expert ? 0.0f : recording.weight(t, layer, s);
      }
    }
  }

  [[nodiscard]] index num_experts() const noexcept { return m_base.num_experts(); }
  [[nodiscard]] index hidden() const noexcept { return m_base.hidden(); }
  [[nodiscard]] index max_slots() const noexcept { return m_base.max_slots(); }
  /// Tokens of the recording: the batch routed must have this many rows.
  [[nodiscard]] index num_tokens() const noexcept { return m_tokens; }
  /// The recording's layer this router replays.
  [[nodiscard]] index layer() const noexcept { return m_layer; }
  [[nodiscard]] const forced_routes_options& options() const noexcept { return m_options; }
  /// The base policy (logits, gate, weights).
  [[nodiscard]] const Base& base() const noexcept { return m_base; }
  /// The recorded expert of slot s of token t, or moe::no_expert.
  [[nodiscard]] std::int32_t expert(index t, index s) const noexcept {
    return m_experts[static_cast<std::size_t>(t * max_slots() + s)];
  }

  /// Routes `x [T × d]` (T = num_tokens()) into `plan` (`[T × k]` over E experts): the base's
  /// logits on up to `ctx.threads` threads as moe::route_by_stages computes them (the same bits),
  /// the recorded experts, the weights of the rule above.
  void route(const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws) const {
    constexpr const char* where = "moe::forced_routes::route";
    detail::check_extent(where, "x.cols()", x.cols(), hidden());
    check_tokens(where, "x.rows()", x.rows());
    const index T = x.rows(), E = num_experts();
    plan.reset(T, max_slots(), E);
    if (T == 0) return;
    const int nt = detail::token_choice::threads_for(ctx, T);
    float* z = ws.take<float>(static_cast<std::size_t>(T * E));  // [T × E]
    if constexpr (detail::token_choice::linear_logits<Base>) {
      const index d = hidden();
      const bool decode = T <= detail::token_choice::decode_rows && nt > 1;
      float* in = nullptr;  // [T × d] router input, for a transformed_input base
      if constexpr (detail::token_choice::transformed_input<Base>) in = ws.take<float>(static_cast<std::size_t>(T * d));
      auto* scratch = ws.take<kernels::gemm_scratch>(static_cast<std::size_t>(nt));
      for (int i = 0; i < nt; ++i) scratch[i] = kernels::make_gemm_scratch(decode ? T : (T + nt - 1) / nt, d, ws);
      route_rows(z, T, nt, plan, ws, [&](int tid, int team, auto&& barrier) {
        detail::token_choice::linear_logits_share(m_base, x, in, z, scratch[tid], tid, team, barrier);
      }, where, "x");
    } else {
      m_base.logits(x, z, E, ws);
      route_rows(z, T, nt, plan, ws, [](int, int, auto&&) {}, where, "x");
    }
  }

  /// Routes precomputed raw logits `z = W x [T × E]` (copied; the base's scale_logits stage,
  /// its temperature, is applied once), as route() routes x.
  void route_logits(const_matrix_map<float> z, routing_plan& plan, workspace& ws, const route_context& ctx = {}) const {
    constexpr const char* where = "moe::forced_routes::route_logits";
    const index E = num_experts();
    detail::check_extent(where, "z.cols()", z.cols(), E);
    check_tokens(where, "z.rows()", z.rows());
    const index T = z.rows();
    plan.reset(T, max_slots(), E);
    if (T == 0) return;
    float* copy = ws.take<float>(static_cast<std::size_t>(T * E));  // [T × E]
    route_rows(copy, T, detail::token_choice::threads_for(ctx, T), plan, ws, [&](int tid, int team, auto&&) {
      const auto rows = detail::share_of(T, tid, team);
      detail::copy_rows(z, rows.begin, rows.end, copy);
      detail::token_choice::scale(m_base, copy + rows.begin * E, rows.end - rows.begin, E);
    }, where, "z");
  }

 private:
  void check_tokens(std::string_view where, std::string_view param, index rows) const {
    if (rows != m_tokens) {
      detail::fail_parameter(error_id::shape, where, param,
                             detail::concat("equal to the recording's token count ", m_tokens), rows);
    }
  }

  // Per-thread buffers: scores and scratch [E], the recorded experts' columns, slots and weights [k].
  struct buffers {
    float* s;
    float* scratch;
    std::int32_t* idx;
    index* slot;
    float* w;
  };

  // Row t of the logits `zt` (modified in place) into the plan; false (nothing written) if the
  // base's NaN stage threw, which the caller reports after the parallel region.
  bool route_row(float* zt, index t, routing_plan& plan, const buffers& b, std::string_view where,
                 std::string_view param) const noexcept {
    const index E = num_experts(), k = max_slots();
    try {
      detail::token_choice::prepare(m_base, zt, E, t, where, param);
    } catch (...) {
      return false;
    }
    const std::int32_t* rec = m_experts.data() + t * k;
    index count = 0;
    for (index s = 0; s < k; ++s) {
      if (rec[s] == no_expert) continue;
      b.idx[count] = rec[s];
      b.slot[count] = s;
      ++count;
    }
    const bool live = m_base.gate_row(zt, b.s);
    plan.entropy_data()[t] = live ? m_base.row_entropy(b.s, b.scratch) : 0.0f;
    plan.top_score_data()[t] = live && count > 0 ? b.s[b.idx[0]] : 0.0f;  // before weigh_row may overwrite s
    if (!m_weights.empty()) {
      for (index i = 0; i < count; ++i) b.w[i] = m_weights[static_cast<std::size_t>(t * k + b.slot[i])];
    } else if (live) {
      m_base.weigh_row(b.s, b.idx, count, b.w);
    } else {
      std::fill(b.w, b.w + count, 0.0f);  // every logit -inf: the recorded experts compute nothing
    }
    auto experts = plan.experts(t);
    auto weights = plan.weights(t);
    for (index i = 0; i < count; ++i) {
      experts[static_cast<std::size_t>(b.slot[i])] = b.idx[i];
      weights[static_cast<std::size_t>(b.slot[i])] = b.w[i];
    }
    return true;
  }

  // moe::detail::token_choice::route_rows with the recorded selection: `logits(tid, team,
  // barrier)` fills the thread's rows of z, then each thread routes its share; a NaN error is
  // raised after the region for the lowest bad token, as on one thread.
  template <class Logits>
  void route_rows(float* z, index T, int nt, routing_plan& plan, workspace& ws, Logits&& logits, std::string_view where,
                  std::string_view param) const {
    const index E = num_experts(), K = std::max<index>(max_slots(), 1);
    const auto n = static_cast<std::size_t>(nt);
    float* s = ws.take<float>(n * static_cast<std::size_t>(E));
    float* scratch = ws.take<float>(n * static_cast<std::size_t>(E));
    auto* idx = ws.take<std::int32_t>(n * static_cast<std::size_t>(K));
    auto* slot = ws.take<index>(n * static_cast<std::size_t>(K));
    float* w = ws.take<float>(n * static_cast<std::size_t>(K));
    auto* bad = ws.take<index>(n);  // first row whose NaN stage threw, per thread, or -1
    std::fill(bad, bad + nt, index{-1});
    int team_size = 1;
    const auto buffers_of = [&](int tid) {
      return buffers{s + tid * E, scratch + tid * E, idx + tid * K, slot + tid * K, w + tid * K};
    };
    detail::parallel_region(nt, [&](int tid, int team, auto&& barrier) {
      if (tid == 0) team_size = team;
      logits(tid, team, barrier);
      const buffers b = buffers_of(tid);
      const auto rows = detail::share_of(T, tid, team);
      for (index t = rows.begin; t < rows.end; ++t) {
        if (!route_row(z + t * E, t, plan, b, where, param)) {
          bad[tid] = t;
          break;
        }
      }
    });
    plan.mark_entropy();
    plan.mark_top_score();
    plan.invalidate();
    for (int i = 0; i < team_size; ++i) {
      if (bad[i] < 0) continue;
      const buffers b = buffers_of(0);
      for (index t = bad[i]; t < detail::share_of(T, i, team_size).end; ++t) {
        if (!route_row(z + t * E, t, plan, b, where, param)) {
          detail::token_choice::prepare(m_base, z + t * E, E, t, where, param);  // throws: the lowest bad token
        }
      }
    }
  }

  Base m_base;
  forced_routes_options m_options;
  index m_tokens = 0;
  index m_layer = 0;
  std::vector<std::int32_t> m_experts;  // [T × k] the recorded layer's ids
  std::vector<float> m_weights;         // [T × k] its recorded weights (replay_weights::recorded), or empty
};

static_assert(router<forced_routes<top_k<softmax_gate>>>);
static_assert(router<forced_routes<top_k<sigmoid_gate>>>);

}  // namespace moe
