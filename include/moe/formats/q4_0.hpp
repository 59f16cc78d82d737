// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "moe/core/f16.hpp"
#include "moe/formats/format.hpp"

namespace moe::formats {

/// GGUF Q4_0 (GGML type 2): 32 values as 4-bit codes and one fp16 scale `d`, value = d · (c - 8).
/// Byte j (0..15) holds element j in its low nibble and element j + 16 in its high nibble.
///
/// Quantiser (ggml's scale, moe's rounding): m = the element of largest magnitude (the first one on
/// ties), d = fp16(m / -8), c = clamp(round(x / d) + 8, 0, 15) with the stored (fp16) d and ties
/// away from zero (ggml rounds x·(1/d) half up with the unrounded d: codes can differ by one on
/// ties). The extreme maps to code 0 exactly;
/// elements are reconstructed from [-8, 7]·d, so the error bound is |x - value| <= |d| / 2 for
/// elements on the extreme's side and <= |d| on the other (where 8|d| is out of reach), plus
/// max|x| · 2^-10 for the scale's fp16 rounding.
struct q4_0 {
  static constexpr std::string_view name = "Q4_0";
  static constexpr int ggml_type = 2;
  static constexpr index block_values = 32;
  static constexpr std::size_t block_bytes = 18;
  struct block {
    std::uint16_t d;  // fp16
    std::uint8_t qs[16];
  };

  static void quantize(const float* x, block& b) noexcept {
    float amax = 0.0f, m = 0.0f;
    for (index i = 0; i < 32; ++i) {
      if (std::abs(x[i]) > amax) {
        amax = std::abs(x[i]);
        m = x[i];
      }
    }
    b.d = f16::from_float(m / -8.0f);
    const float d = f16::to_float(b.d);
    const auto code = [&](float v) {
      const float q = d != 0.0f ? std::round(v / d) : 0.0f;
      return static_cast<std::uint8_t>(std::clamp(q, -8.0f, 7.0f) + 8.0f);
    };
    for (index j = 0; j < 16; ++j) b.qs[j] = static_cast<std::uint8_t>(code(x[j]) | (code(x[j + 16]) << 4));
  }
  static void dequantize(const block& b, float* y) noexcept {
    const float d = f16::to_float(b.d);
    for (index j = 0; j < 16; ++j) {
      y[j] = d * static_cast<float>((b.qs[j] & 0x0f) - 8);
      y[j + 16] = d * static_cast<float>((b.qs[j] >> 4) - 8);
    }
  }
  static bool scales_finite(const block& b) noexcept { return (b.d & 0x7c00u) != 0x7c00u; }
};
static_assert(block_format<q4_0>);

}  // namespace moe::formats
