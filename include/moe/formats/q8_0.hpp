// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "moe/core/f16.hpp"
#include "moe/formats/format.hpp"

namespace moe::formats {

/// GGUF Q8_0 (GGML type 8): 32 values as int8 `q` and one fp16 scale `d`, value = d · q.
///
/// Quantiser: d = fp16(max|x| / 127); q = round(x / d) (ties away from zero), clamped to
/// [-127, 127] (0 when d = 0). Error bound: |x - d·q| <= d / 2 + max|x| · 2^-10 (the second term
/// is the scale's fp16 rounding).
struct q8_0 {
  static constexpr std::string_view name = "Q8_0";
  static constexpr int ggml_type = 8;
  static constexpr index block_values = 32;
  static constexpr std::size_t block_bytes = 34;
  struct block {
    std::uint16_t d;  // fp16
    std::int8_t qs[32];
  };

  static void quantize(const float* x, block& b) noexcept {
    float amax = 0.0f;
    for (index i = 0; i < 32; ++i) amax = std::max(amax, std::abs(x[i]));
    b.d = f16::from_float(amax / 127.0f);
    const float d = f16::to_float(b.d);
    for (index i = 0; i < 32; ++i) {
      const float q = d > 0.0f ? std::round(x[i] / d) : 0.0f;
      b.qs[i] = static_cast<std::int8_t>(std::clamp(q, -127.0f, 127.0f));
    }
  }
  static void dequantize(const block& b, float* y) noexcept {
    const float d = f16::to_float(b.d);
    for (index i = 0; i < 32; ++i) y[i] = d * static_cast<float>(b.qs[i]);
  }
  static bool scales_finite(const block& b) noexcept { return (b.d & 0x7c00u) != 0x7c00u; }
};
static_assert(block_format<q8_0>);

}  // namespace moe::formats
