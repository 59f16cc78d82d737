// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Placement: which logical experts each process holds (docs/architecture.md §5.3). A device that
// holds a share of the experts per process (moe::device::mpi) takes one; the routing plan speaks
// of logical experts, the placement maps each to the (rank, local slot) pairs that hold it.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <utility>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

/// Where a replica of a logical expert lives: a rank and the expert's slot in that rank's bank.
struct expert_location {
  int rank = 0;
  index slot = 0;
  friend bool operator==(const expert_location&, const expert_location&) = default;
};

/// Which logical experts each of `num_ranks()` processes holds.
///
/// Rank r's local bank holds the logical experts `local_experts(r)`, in that order (its bank's
/// expert i is logical expert local_experts(r)[i]). An expert may be held by several ranks
/// (replicas): they hold the same weights, so any replica gives the same bits, and
/// `replica_for()` picks one per token by a fixed rule. Every logical expert is held at least
/// once; a rank may hold none.
class placement {
 public:
  /// Rank r holds `experts_of_rank[r]` (logical ids in [0, num_experts), no id twice on a rank).
  /// Throws moe::error naming the rank or expert that breaks a rule.
  placement(index num_experts, std::vector<std::vector<index>> experts_of_rank)
      : m_experts(num_experts), m_local(std::move(experts_of_rank)) {
    constexpr const char* where = "moe::placement";
    if (m_experts < 1) detail::fail_parameter(error_id::config, where, "num_experts", ">= 1", m_experts);
    if (m_local.empty()) detail::fail_parameter(error_id::config, where, "experts_of_rank.size()", ">= 1 rank", 0);
    m_replicas.assign(static_cast<std::size_t>(m_experts), {});
    for (std::size_t r = 0; r < m_local.size(); ++r) {
      const auto& list = m_local[r];
      for (std::size_t i = 0; i < list.size(); ++i) {
        const index e = list[i];
        if (e < 0 || e >= m_experts) {
          detail::fail_parameter(error_id::config, where, detail::concat("experts_of_rank[", r, "][", i, "]"),
                                 detail::concat("a logical expert in [0, ", m_experts, ")"), e);
        }
        auto& reps = m_replicas[static_cast<std::size_t>(e)];
        if (!reps.empty() && reps.back().rank == static_cast<int>(r)) {
          detail::fail_parameter(error_id::config, where, detail::concat("experts_of_rank[", r, "][", i, "]"),
                                 detail::concat("an expert not already held by rank ", r), e);
        }
        reps.push_back({static_cast<int>(r), static_cast<index>(i)});
      }
    }
    for (index e = 0; e < m_experts; ++e) {
      if (m_replicas[static_cast<std::size_t>(e)].empty()) {
        detail::fail_parameter(error_id::config, where, detail::concat("expert ", e),
                               "held by at least one rank", "held by none");
      }
    }
  }

  /// Contiguous blocks, the default: rank r holds experts `[E·r/R, E·(r+1)/R)`.
  [[nodiscard]] static placement contiguous(index num_experts, int ranks) {
    if (ranks < 1) detail::fail_parameter(error_id::config, "moe::placement::contiguous", "ranks", ">= 1", ranks);
    std::vector<index> sizes(static_cast<std::size_t>(ranks));
    for (int r = 0; r < ranks; ++r) sizes[r] = num_experts * (r + 1) / ranks - num_experts * r / ranks;
    return blocks(sizes);
  }

  /// Contiguous blocks of the given sizes (uneven placements): rank r holds the next sizes[r]
  /// experts. The sizes must add up to the number of experts.
  [[nodiscard]] static placement blocks(std::span<const index> sizes) {
    std::vector<std::vector<index>> local(sizes.size());
    index next = 0;
    for (std::size_t r = 0; r < sizes.size(); ++r) {
      if (sizes[r] < 0) detail::fail_parameter(error_id::config, "moe::placement::blocks", detail::concat("sizes[", r, "]"), ">= 0", sizes[r]);
      for (index i = 0; i < sizes[r]; ++i) local[r].push_back(next++);
    }
    return placement(next, std::move(local));
  }
  [[nodiscard]] static placement blocks(std::initializer_list<index> sizes) {
    return blocks(std::span<const index>(sizes.begin(), sizes.size()));
  }

  /// A balanced placement from recorded loads (the EPLB idea), deterministic:
  ///   1. replication: every expert starts with one replica; while fewer than
  ///      `ranks · slots_per_rank` replicas exist, the expert with the largest load per replica
  ///      gets one more (ties: lower id), never more replicas than ranks;
  ///   2. packing: replicas, by descending load per replica (ties: lower expert id), go to the
  ///      rank with the least load that has a free slot and does not hold that expert yet (ties:
  ///      lower rank);
  ///   3. each rank lists its experts in ascending id.
  /// @param load recorded tokens (or any non-negative weight) per logical expert, finite.
  /// @param slots_per_rank experts a rank can hold; `ranks · slots_per_rank >= load.size()`.
  [[nodiscard]] static placement balanced(std::span<const double> load, int ranks, index slots_per_rank) {
    constexpr const char* where = "moe::placement::balanced";
    const auto E = static_cast<index>(load.size());
    if (ranks < 1) detail::fail_parameter(error_id::config, where, "ranks", ">= 1", ranks);
    if (E < 1) detail::fail_parameter(error_id::config, where, "load.size()", ">= 1", E);
    if (slots_per_rank < 1 || slots_per_rank * ranks < E) {
      detail::fail_parameter(error_id::config, where, "slots_per_rank", detail::concat(">= ceil(E / ranks) = ", (E + ranks - 1) / ranks), slots_per_rank);
    }
    for (index e = 0; e < E; ++e) {
      if (!(load[e] >= 0.0) || !std::isfinite(load[e])) {
        detail::fail_parameter(error_id::config, where, detail::concat("load[", e, "]"), "finite and >= 0", load[e]);
      }
    }
    std::vector<index> count(static_cast<std::size_t>(E), 1);
    const index total = std::min<index>(slots_per_rank * ranks, E * ranks);
    for (index have = E; have < total; ++have) {
      index best = -1;
      for (index e = 0; e < E; ++e) {
        if (count[e] >= ranks) continue;
        if (best < 0 || load[e] / count[e] > load[best] / count[best]) best = e;
      }
      if (best < 0) break;
      ++count[best];
    }
    struct replica {
      index expert;
      double share;
    };
    std::vector<replica> reps;
    for (index e = 0; e < E; ++e) {
      for (index c = 0; c < count[e]; ++c) reps.push_back({e, load[e] / static_cast<double>(count[e])});
    }
    std::stable_sort(reps.begin(), reps.end(), [](const replica& a, const replica& b) {
      return a.share > b.share || (a.share == b.share && a.expert < b.expert);
    });
    std::vector<double> rank_load(static_cast<std::size_t>(ranks), 0.0);
    std::vector<std::vector<index>> local(static_cast<std::size_t>(ranks));
    for (const auto& rp : reps) {
      int pick = -1;
      for (int r = 0; r < ranks; ++r) {
        const auto& held = local[r];
        if (static_cast<index>(held.size()) >= slots_per_rank) continue;
        if (std::find(held.begin(), held.end(), rp.expert) != held.end()) continue;
        if (pick < 0 || rank_load[r] < rank_load[pick]) pick = r;
      }
      if (pick < 0) continue;  // no rank can take another copy: drop this surplus replica
      local[pick].push_back(rp.expert);
      rank_load[pick] += rp.share;
    }
    for (auto& l : local) std::sort(l.begin(), l.end());
    return placement(E, std::move(local));
  }

  [[nodiscard]] index num_experts() const noexcept { return m_experts; }
  [[nodiscard]] int num_ranks() const noexcept { return static_cast<int>(m_local.size()); }
  /// The logical experts of rank r's bank, in bank order.
  [[nodiscard]] std::span<const index> local_experts(int rank) const { return m_local.at(static_cast<std::size_t>(rank)); }
  [[nodiscard]] index local_count(int rank) const { return static_cast<index>(local_experts(rank).size()); }
  /// The replicas of logical expert e, in ascending rank.
  [[nodiscard]] std::span<const expert_location> replicas(index e) const {
    return m_replicas.at(static_cast<std::size_t>(e));
  }

  /// The replica that computes expert e for token t of rank `source`: the one on `source` itself
  /// when it holds e (no transfer), else replica `t mod n` of the n replicas in ascending rank.
  /// Any replica gives the same bits; the rule only spreads the rows.
  [[nodiscard]] expert_location replica_for(index e, int source, index t) const noexcept {
    const auto& reps = m_replicas[static_cast<std::size_t>(e)];
    if (reps.size() == 1) return reps[0];
    for (const auto& r : reps) {
      if (r.rank == source) return r;
    }
    return reps[static_cast<std::size_t>(t % static_cast<index>(reps.size()))];
  }

  /// Load of each rank for a load per logical expert, an expert's load split evenly over its
  /// replicas.
  [[nodiscard]] std::vector<double> rank_loads(std::span<const double> load) const {
    detail::check_extent("moe::placement::rank_loads", "load.size()", static_cast<index>(load.size()), m_experts);
    std::vector<double> out(m_local.size(), 0.0);
    for (index e = 0; e < m_experts; ++e) {
      const auto& reps = m_replicas[static_cast<std::size_t>(e)];
      for (const auto& r : reps) out[static_cast<std::size_t>(r.rank)] += load[e] / static_cast<double>(reps.size());
    }
    return out;
  }

  /// Balancedness: mean over max of the rank loads (1 is perfect; 1 when nothing is loaded).
  [[nodiscard]] double balancedness(std::span<const double> load) const {
    const auto per_rank = rank_loads(load);
    const double mx = *std::max_element(per_rank.begin(), per_rank.end());
    if (!(mx > 0.0)) return 1.0;
    return std::accumulate(per_rank.begin(), per_rank.end(), 0.0) / static_cast<double>(per_rank.size()) / mx;
  }

  /// A 64-bit digest of the placement (FNV-1a over E, the ranks and their lists), compared
  /// across processes to detect ranks that disagree.
  [[nodiscard]] std::uint64_t fingerprint() const noexcept {
    std::uint64_t h = 1469598103934665603ull;
    const auto mix = [&h](std::uint64_t v) {
      for (int i = 0; i < 8; ++i) {
        h ^= (v >> (8 * i)) & 0xffu;
        h *= 1099511628211ull;
      }
    };
    mix(static_cast<std::uint64_t>(m_experts));
    mix(m_local.size());
    for (const auto& l : m_local) {
      mix(l.size());
      for (index e : l) mix(static_cast<std::uint64_t>(e));
    }
    return h;
  }

 private:
  index m_experts;
  std::vector<std::vector<index>> m_local;
  std::vector<std::vector<expert_location>> m_replicas;
};

}  // namespace moe
