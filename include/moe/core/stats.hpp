// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <iomanip>
#include <limits>
#include <ostream>
#include <vector>

#include "moe/config.hpp"
#include "moe/plan.hpp"

namespace moe {

/// What a user watches about routing: computed from a plan on request (never during forward).
struct routing_stats {
  index tokens = 0;                    ///< T
  index experts = 0;                   ///< E
  std::vector<index> load;             ///< tokens routed to each expert, [E]
  index assignments = 0;               ///< Σ load: (token, slot) pairs that compute something
  double mean_experts_per_token = 0;   ///< assignments / T (0 if T = 0)
  index tokens_routed_nowhere = 0;     ///< tokens with no active slot (degenerate, all-null, dropped, skipped)
  index tokens_skipped = 0;            ///< tokens with passes = 0
  index assignments_dropped = 0;       ///< assignments a capacity limit removed (plan.dropped())
  /// Mean entropy (nats) of the tokens' full routing distributions; NaN if the router gives none
  /// (printed as "n/a").
  double routing_entropy = std::numeric_limits<double>::quiet_NaN();
  /// Entropy (nats) of the load distribution `load / assignments`; log(E) is perfect balance.
  double load_entropy = 0;
  /// max(load) / mean(load) over the E experts (1 is perfect balance; 0 if nothing is routed).
  double max_over_mean_load = 0;
};

/// Statistics of a plan.
inline routing_stats compute_stats(const routing_plan& plan) {
  routing_stats s;
  s.tokens = plan.num_tokens();
  s.experts = plan.num_experts();
  s.load.assign(static_cast<std::size_t>(s.experts), 0);
  s.assignments_dropped = plan.dropped();
  double entropy_sum = 0;
  for (index t = 0; t < s.tokens; ++t) {
    index active = 0;
    for (auto e : plan.experts(t)) {
      if (e < 0 || e >= s.experts) continue;  // no_expert, or an id build_expert_major() rejects
      ++s.load[static_cast<std::size_t>(e)];
      ++active;
    }
    s.assignments += active;
    s.tokens_routed_nowhere += active == 0;
    s.tokens_skipped += plan.passes(t) == 0;
    if (plan.has_entropy()) entropy_sum += plan.entropy(t);
  }
  if (s.tokens > 0) {
    s.mean_experts_per_token = static_cast<double>(s.assignments) / static_cast<double>(s.tokens);
    if (plan.has_entropy()) s.routing_entropy = entropy_sum / static_cast<double>(s.tokens);
  }
  if (s.assignments > 0) {
    index max_load = 0;
    for (index l : s.load) {
      max_load = std::max(max_load, l);
      if (l == 0) continue;
      const double q = static_cast<double>(l) / static_cast<double>(s.assignments);
      s.load_entropy -= q * std::log(q);
    }
    s.max_over_mean_load = static_cast<double>(max_load) * static_cast<double>(s.experts) /
                           static_cast<double>(s.assignments);
  }
  return s;
}

/// Prints a one-line summary and a per-expert load table.
inline std::ostream& operator<<(std::ostream& out, const routing_stats& s) {
  const auto flags = out.flags();
  const auto precision = out.precision();
  out << std::fixed << std::setprecision(3) << "tokens " << s.tokens << ", experts " << s.experts
      << ", mean experts/token " << s.mean_experts_per_token << ", routing entropy ";
  // A router that records no entropy (or an empty batch) has none: "n/a", not "nan".
  if (std::isnan(s.routing_entropy)) {
    out << "n/a";
  } else {
    out << s.routing_entropy << " nats";
  }
  out << ", load entropy " << s.load_entropy << " nats (max "
      << std::log(static_cast<double>(std::max<index>(s.experts, 1))) << "), max/mean load "
      << s.max_over_mean_load << ", routed nowhere " << s.tokens_routed_nowhere;
  if (s.assignments_dropped > 0) out << ", dropped " << s.assignments_dropped;
  out << '\n';
  out << "load per expert:";
  for (std::size_t e = 0; e < s.load.size(); ++e) {
    if (e % 16 == 0) out << "\n  [" << std::setw(3) << e << "]";
    out << ' ' << std::setw(5) << s.load[e];
  }
  out << '\n';
  out.flags(flags);
  out.precision(precision);
  return out;
}

}  // namespace moe
