// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "moe/config.hpp"
#include "moe/core/views.hpp"

namespace moe {

/// Extra inputs that some router policies need besides the token states. Every field is optional;
/// a policy that needs one checks it at the entry of route() and throws moe::error when absent.
struct route_context {
  /// Start row of each sequence in the batch, ascending, first 0 (rows `[starts[i], starts[i+1])`,
  /// the last sequence ending at T). Empty: the whole batch is one sequence. Per-token policies
  /// ignore it.
  std::span<const index> sequence_starts = {};
  /// Per-token condition flags, `[T]` (ProMoE conditional routing, moe::prototypical): nonzero
  /// = conditional (routed by prototypes), 0 = unconditional (sent to the unconditional
  /// experts). Empty: every token is conditional. Expand a per-sample label with
  /// sequence_starts.
  std::span<const std::uint8_t> conditional = {};
  /// Head-averaged attention probabilities of the attention sublayer before this MoE layer: for
  /// each sequence in order, its `[L × L]` row-major block (row i: the weights token i gives
  /// tokens 0..L-1 of its own sequence), so `Σ L²` floats in all; one sequence of T tokens is a
  /// `[T × T]` matrix. Used by moe::similarity_aware (attention mode) and moe::ftp (features).
  std::span<const float> attention = {};
  /// The decoder block's input `[T × d]` (the states before attention), for depth policies: the
  /// layer-skip papers (MoD, Dr.LLM, γ-MoD, FTP's static rule aside) decide from the block input,
  /// while the MoE layer sees the states after attention. When set, moe::layer_skip hands these
  /// rows to its depth policy instead of the layer's `x` (same row count as `x`, the policy's
  /// hidden size); the experts still run on `x`. Unset: the depth policy decides from `x`
  /// (docs/routing-spec.md §13). Repeated passes re-route with the inner router only.
  std::optional<const_matrix_map<float>> block_input = std::nullopt;
  /// Threads a router may use (0: as many as the layer's device uses; moe::layer fills it in).
  int threads = 0;
};

}  // namespace moe
