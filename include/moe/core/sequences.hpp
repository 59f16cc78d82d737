// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The sequences of a batch, as route_context::sequence_starts describes them. One set of rules
// for every router and loss that works per sequence:
// - empty starts: the whole batch is one sequence `[0, T)` (also when T = 0);
// - otherwise `starts[0] == 0`, the starts are non-decreasing and each is at most T; sequence i
//   is `[starts[i], starts[i+1])`, the last one ends at T. Empty sequences (two equal starts, or a
//   last start equal to T) are legal: a policy that cannot handle one says so itself.

#include <cstddef>
#include <span>
#include <string_view>
#include <utility>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe::detail {

/// Validates `starts` for a batch of T tokens (the rules above); throws moe::error (input)
/// naming `ctx.sequence_starts[i]`, the first start that breaks them.
inline void check_sequence_starts(std::span<const index> starts, index T, std::string_view where) {
  if (starts.empty()) return;
  if (starts[0] != 0) fail_parameter(error_id::input, where, "ctx.sequence_starts[0]", "0", starts[0]);
  for (std::size_t i = 1; i < starts.size(); ++i) {
    if (starts[i] < starts[i - 1] || starts[i] > T) {
      fail_parameter(error_id::input, where, concat("ctx.sequence_starts[", i, "]"),
                     concat("in [", starts[i - 1], ", ", T, "] (non-decreasing, at most T)"), starts[i]);
    }
  }
}

/// Number of sequences `starts` describes: 1 when empty, else `starts.size()`.
[[nodiscard]] inline index sequence_count(std::span<const index> starts) noexcept {
  return starts.empty() ? 1 : static_cast<index>(starts.size());
}

/// Begin and end rows of sequence `i` (of sequence_count(starts)) in a batch of T tokens.
[[nodiscard]] inline std::pair<index, index> sequence_range(std::span<const index> starts, index i,
                                                            index T) noexcept {
  if (starts.empty()) return {0, T};
  const auto u = static_cast<std::size_t>(i);
  return {starts[u], u + 1 < starts.size() ? starts[u + 1] : T};
}

/// Validates `starts`, then calls `f(begin, end)` for every sequence, in order, empty ones
/// included.
template <class F>
void for_each_sequence(std::span<const index> starts, index T, std::string_view where, F&& f) {
  check_sequence_starts(starts, T, where);
  const index n = sequence_count(starts);
  for (index i = 0; i < n; ++i) {
    const auto [begin, end] = sequence_range(starts, i, T);
    f(begin, end);
  }
}

}  // namespace moe::detail
