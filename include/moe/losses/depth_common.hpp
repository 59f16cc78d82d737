// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Double-precision helpers shared by the layer-skip losses (MoD, Dr.LLM, γ-MoD, FTP).

#include <algorithm>
#include <cmath>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe::detail::depth {

/// log(1 + e^v), stable for any finite v.
inline double softplus(double v) noexcept { return std::max(v, 0.0) + std::log1p(std::exp(-std::abs(v))); }

/// 1 / (1 + e^-v), stable for any finite v.
inline double sigmoid(double v) noexcept {
  const double e = std::exp(-std::abs(v));
  return v >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/// Throws moe::error naming `name[i]` unless 0 <= v <= 1.
template <class S>
void check_probability(const char* where, const char* name, index i, S v) {
  if (!(v >= S(0) && v <= S(1))) fail_parameter(error_id::input, where, concat(name, "[", i, "]"), "in [0, 1]", v);
}

}  // namespace moe::detail::depth
