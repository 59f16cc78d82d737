// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The CUDA routing and sorting kernels run on the host (docs/architecture.md §5.4): the same
// functions of routing_math.hpp over the same grid/block index math, the lanes of a row one after
// the other. This is how every build tests the kernels' logic without a GPU
// (tests/device/cuda_logic_test.cpp compares it with the CPU routers bit for bit). It is also
// what builds the kernels' parameters from the host routers (policy_of()).
//
// Host code only (it includes the routers); the GPU side is routing.cuh.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/device/cuda/routing_math.hpp"
#include "moe/plan.hpp"
#include "moe/routing/routers/gates.hpp"
#include "moe/routing/routers/group_limited.hpp"
#include "moe/routing/routers/top_k.hpp"
#include "moe/routing/wrappers/null_experts.hpp"

namespace moe::kernels::cuda {

template <class Gate>
constexpr gate_kind gate_kind_of() noexcept {
  static_assert(std::is_same_v<Gate, moe::softmax_gate> || std::is_same_v<Gate, moe::sigmoid_gate>,
                "moe::kernels::cuda::policy_of<Gate>: the fused routing kernel has softmax_gate and sigmoid_gate only");
  return std::is_same_v<Gate, moe::softmax_gate> ? gate_kind::softmax : gate_kind::sigmoid;
}

/// The row policy of moe::top_k (its bias pointer stays the router's: keep the router alive).
template <class Gate>
row_policy policy_of(const moe::top_k<Gate>& r) {
  const auto& o = r.options();
  row_policy p;
  p.gate = gate_kind_of<Gate>();
  p.columns = static_cast<std::int32_t>(r.columns());
  p.k = o.k;
  p.renormalize = o.renormalize;
  p.select_on_logits = Gate::monotone && o.selection_bias.empty();
  p.nan_to_neg_inf = o.nan == moe::nan_policy::to_neg_inf;
  p.route_scale = o.route_scale;
  p.temperature = o.temperature;
  p.bias = o.selection_bias.empty() ? nullptr : o.selection_bias.data();
  return p;
}

/// The row policy of moe::group_limited (the router's current bias).
template <class Gate>
row_policy policy_of(const moe::group_limited<Gate>& r) {
  const auto& o = r.options();
  const auto bias = r.bias();
  row_policy p;
  p.gate = gate_kind_of<Gate>();
  p.columns = static_cast<std::int32_t>(r.num_experts());
  p.k = o.k;
  p.renormalize = o.renormalize;
  p.select_on_logits = Gate::monotone && std::all_of(bias.begin(), bias.end(), [](float b) { return b == 0.0f; });
  p.nan_to_neg_inf = o.nan == moe::nan_policy::to_neg_inf;
  p.route_scale = o.route_scale;
  p.temperature = o.temperature;
  p.bias = bias.data();
  p.n_groups = o.n_groups;
  p.topk_groups = o.topk_groups;
  p.group_score = o.score == moe::group_score::max ? group_kind::max : group_kind::top2_sum;
  return p;
}

/// The row policy of moe::null_experts over moe::top_k: the base's, with its null columns.
template <class Gate>
row_policy policy_of(const moe::null_experts<moe::top_k<Gate>>& r) {
  row_policy p = policy_of(r.base());
  p.null_columns = static_cast<std::int32_t>(r.num_null_experts());
  return p;
}

/// Whether the fused routing kernel takes this policy: k <= max_k, C <= max_columns.
inline bool can_route(const row_policy& p) noexcept {
  return p.k >= 1 && p.k <= max_k && p.k <= p.columns && p.columns >= 1 && p.columns <= max_columns &&
         (p.n_groups == 0 || (p.columns % p.n_groups == 0 && p.topk_groups >= 1 && p.topk_groups <= p.n_groups));
}

/// The lanes of a row, one after the other on the calling thread.
struct serial_lanes {
  template <class F>
  void lanes(F&& f) const {
    for (int lane = 0; lane < row_lanes; ++lane) f(lane);
  }
};

/// The CUDA kernels' logic on the host.
struct host_emulation {
  /// The routing kernel: rows `z [T × C]` (modified in place as the kernel modifies them) by
  /// `pol`, into `out`; block by block, each row of a block with its own shared scratch.
  static void route(const row_policy& pol, float* z, std::int64_t T, const batch_output& out) {
    const int G = pol.n_groups;
    const std::size_t row_bytes = row_scratch_bytes(pol.columns, G);
    std::vector<std::max_align_t> shared((routing_rows_per_block * row_bytes + sizeof(std::max_align_t) - 1) /
                                         sizeof(std::max_align_t));
    const std::int64_t blocks = routing_blocks(T);
    for (std::int64_t block = 0; block < blocks; ++block) {
      for (int thread = 0; thread < routing_rows_per_block * row_lanes; thread += row_lanes) {
        const row_lane rl = routing_row_of(block, thread);
        if (rl.row >= T) continue;
        auto* bytes = reinterpret_cast<unsigned char*>(shared.data()) + rl.row_in_block * row_bytes;
        row_state* s = carve_row_scratch(bytes, pol.columns, G);
        route_row(serial_lanes{}, pol, z + rl.row * pol.columns, *s, out.row(rl.row, pol.k));
      }
    }
  }

  /// Routes raw logits `z [T × C]` (copied) into `plan` over `experts` true experts, as the
  /// router's route_logits() does: plan slots, entropy and top-1 score. A NaN logit under
  /// nan_policy::error throws moe::error naming the lowest such token and its first NaN column.
  static void route_logits(const row_policy& pol, const_matrix_map<float> z, index experts, routing_plan& plan) {
    constexpr const char* where = "moe::kernels::cuda::host_emulation::route_logits";
    moe::detail::check_extent(where, "z.cols()", z.cols(), pol.columns);
    if (!can_route(pol)) moe::detail::fail_parameter(moe::error_id::config, where, "policy", "k <= 32 and C <= 2048", pol.k);
    const index T = z.rows(), C = pol.columns, K = pol.k;
    std::vector<float> copy(static_cast<std::size_t>(std::max<index>(T * C, 1)));
    for (index t = 0; t < T; ++t) std::copy_n(z.data() + t * z.outerStride(), C, copy.data() + t * C);
    std::vector<std::int32_t> ex(static_cast<std::size_t>(std::max<index>(T * K, 1))), nan(static_cast<std::size_t>(std::max<index>(T, 1)));
    std::vector<float> w(ex.size()), entropy(nan.size()), top(nan.size());
    route(pol, copy.data(), T, {ex.data(), w.data(), entropy.data(), top.data(), nan.data()});
    for (index t = 0; t < T; ++t) {
      if (nan[static_cast<std::size_t>(t)] >= 0) {
        moe::detail::throw_error(moe::error_id::input, moe::detail::concat(where, ": parameter 'z' gives a NaN router logit (token ", t,
                                                            ", expert ", nan[static_cast<std::size_t>(t)], ")"));
      }
    }
    plan.reset(T, K, experts);
    for (index t = 0; t < T; ++t) {
      auto pe = plan.experts(t);
      auto pw = plan.weights(t);
      for (index s = 0; s < K; ++s) {
        pe[static_cast<std::size_t>(s)] = ex[static_cast<std::size_t>(t * K + s)];
        pw[static_cast<std::size_t>(s)] = w[static_cast<std::size_t>(t * K + s)];
      }
    }
    plan.invalidate();
    std::copy_n(entropy.data(), T, plan.entropy_data());
    std::copy_n(top.data(), T, plan.top_score_data());
    plan.mark_entropy();
    plan.mark_top_score();
  }

  /// The expert-major view of the sorting kernels, over `slots` = T·K token-major slots, with
  /// tiles of `tile` slots: `offsets [E + 1]`, `entries [offsets[E]]`. An expert id outside
  /// [0, E) and not moe::no_expert throws moe::error naming the lowest such slot.
  static void expert_major(const std::int32_t* experts, const float* weights, std::int64_t T, int K, int E,
                           std::int64_t tile, std::vector<std::int64_t>& offsets, std::vector<sort_entry>& entries) {
    const std::int64_t slots = T * K;
    const std::int64_t tiles = sort_tiles(slots, tile);
    std::vector<std::int32_t> counts(static_cast<std::size_t>(std::max<std::int64_t>(tiles * E, 1)));
    std::vector<std::int64_t> totals(static_cast<std::size_t>(E));
    std::int64_t bad = -1;
    for (std::int64_t i = 0; i < tiles; ++i) {  // one thread a tile
      std::int64_t b = -1;
      sort_count_tile(i, tile, experts, weights, slots, E, counts.data(), &b);
      if (b >= 0 && (bad < 0 || b < bad)) bad = b;
    }
    if (bad >= 0) {
      moe::detail::fail_parameter(moe::error_id::plan, "moe::kernels::cuda::host_emulation::expert_major",
                             moe::detail::concat("expert(", bad / K, ", ", bad % K, ")"),
                             moe::detail::concat("in [0, ", E, ") or moe::no_expert"), experts[bad]);
    }
    for (int e = 0; e < E; ++e) sort_scan_expert(e, tiles, E, counts.data(), totals.data());  // one thread an expert
    offsets.assign(static_cast<std::size_t>(E + 1), 0);
    sort_offsets(E, totals.data(), offsets.data());
    entries.resize(static_cast<std::size_t>(offsets[static_cast<std::size_t>(E)]));
    for (std::int64_t i = 0; i < tiles; ++i) {
      sort_place_tile(i, tile, experts, weights, slots, K, E, counts.data(), offsets.data(), entries.data());
    }
  }
};

}  // namespace moe::kernels::cuda
