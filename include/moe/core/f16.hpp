// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <bit>
#include <cstdint>

#include "moe/config.hpp"

namespace moe {

/// IEEE-754 binary16 (1 sign, 5 exponent, 10 mantissa bits): the scale type of GGUF's block
/// formats (docs/numerics.md §10). Conversions are exact to float and round to nearest, ties to
/// even, from float (subnormals kept; overflow gives ±inf; NaN stays a quiet NaN).
struct f16 {
  std::uint16_t bits = 0;

  f16() = default;
  explicit f16(float x) noexcept : bits(from_float(x)) {}
  explicit operator float() const noexcept { return to_float(bits); }

  [[nodiscard]] constexpr bool finite() const noexcept { return (bits & 0x7c00u) != 0x7c00u; }

  static constexpr float to_float(std::uint16_t h) noexcept {
    const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
    const std::uint32_t exp = (h >> 10) & 0x1fu;
    std::uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));  // inf / NaN
    if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
    if (mant == 0) return std::bit_cast<float>(sign);  // ±0
    // Subnormal: mant · 2^-24, normalised.
    std::uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    return std::bit_cast<float>(sign | (e << 23) | ((mant & 0x3ffu) << 13));
  }

  static constexpr std::uint16_t from_float(float x) noexcept {
    const auto u = std::bit_cast<std::uint32_t>(x);
    const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
    const std::uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // NaN
    if (a >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // rounds to >= 2^16: inf
    if (a >= 0x38800000u) {  // normal in binary16 (>= 2^-14)
      const std::uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
      return static_cast<std::uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
    }
    if (a < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25): ±0
    // Subnormal result: the 24-bit significand shifted right by 126 - exponent, ties to even.
    const std::uint32_t exp = a >> 23;
    const std::uint32_t sig = (a & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exp;  // 14 .. 24
    const std::uint32_t q = sig >> shift;
    const std::uint32_t rem = sig & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    const std::uint32_t r = q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
    return static_cast<std::uint16_t>(sign | r);
  }
  friend constexpr bool operator==(f16 a, f16 b) noexcept { return a.bits == b.bits; }
};

static_assert(sizeof(f16) == 2);

}  // namespace moe
