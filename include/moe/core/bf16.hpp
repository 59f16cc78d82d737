// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <bit>
#include <cstdint>

#include "moe/config.hpp"

namespace moe {

/// bfloat16: the upper 16 bits of an IEEE-754 float (8-bit exponent, 7-bit mantissa), the
/// storage type of bf16 checkpoints.
struct bf16 {
  std::uint16_t bits = 0;

  bf16() = default;
  /// Rounds to nearest, ties to even; NaN stays a (quiet) NaN, ±inf stay ±inf.
  explicit bf16(float x) noexcept : bits(from_float(x)) {}
  /// The exact float value.
  explicit operator float() const noexcept {
    return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
  }

  static constexpr std::uint16_t from_float(float x) noexcept {
    const auto u = std::bit_cast<std::uint32_t>(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x0040u);  // NaN
    const std::uint32_t rounding = 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>((u + rounding) >> 16);
  }
  friend constexpr bool operator==(bf16 a, bf16 b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(bf16) == 2);

}  // namespace moe
