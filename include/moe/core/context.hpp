// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <span>

#include "moe/config.hpp"

namespace moe {

/// Extra inputs that some router policies need besides the token states. Every field is optional;
/// a policy that needs one checks it at the entry of route() and throws moe::error when absent.
struct route_context {
  /// Start row of each sequence in the batch, ascending, first 0 (rows `[starts[i], starts[i+1])`,
  /// the last sequence ending at T). Empty: the whole batch is one sequence. Per-token policies
  /// ignore it.
  std::span<const index> sequence_starts = {};
  /// Head-averaged attention probabilities of the most recent attention layer, one row-major
  /// `[L × L]` block (query rows, key columns) per sequence, blocks concatenated in sequence order
  /// (`Σ L²` floats). Used by moe::ftp (token features).
  std::span<const float> attention = {};
  /// Threads a router may use (0: as many as the layer's device uses; moe::layer fills it in).
  int threads = 0;
};

}  // namespace moe
