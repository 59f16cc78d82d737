// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cmath>
#include <cstdint>
#include <string_view>

#include "moe/formats/format.hpp"

namespace moe::formats {

/// GGUF MXFP4 (GGML type 39; OCP Microscaling FP4, as gpt-oss ships its experts): 32 values as
/// FP4 E2M1 codes (magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 and a sign bit) and one E8M0 scale
/// `e` (2^(e - 127); e = 255 is NaN). Value = e2m1(c) · 2^(e - 127). Byte j (0..15) holds element j
/// in its low nibble and element j + 16 in its high nibble, as Q4_0.
///
/// Quantiser: e = 127 + ceil(log2(max|x| / 6)) (so that max|x| / scale <= 6: nothing saturates),
/// clamped to [0, 254]; each x / scale rounds to the nearest E2M1 magnitude (ties to the even
/// code, i.e. the one with mantissa bit 0). Error bound: |x - value| <= scale (half of the
/// largest gap, between 4 and 6), relative to max|x|: <= max|x| / 3.
struct mxfp4 {
  static constexpr std::string_view name = "MXFP4";
  static constexpr int ggml_type = 39;
  static constexpr index block_values = 32;
  static constexpr std::size_t block_bytes = 17;
  struct block {
    std::uint8_t e;  // E8M0
    std::uint8_t qs[16];
  };
  /// Twice the E2M1 value of each code (integers: the kernels' arithmetic).
  static constexpr std::int8_t doubled[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

  /// 2^(e - 127) (exact; e = 0 gives 2^-127, a float subnormal).
  static float scale(std::uint8_t e) noexcept { return std::ldexp(1.0f, static_cast<int>(e) - 127); }

  static std::uint8_t encode(float v) noexcept {  // v = x / scale, |v| <= 6 (up to rounding)
    const float a = std::abs(v);
    // Midpoints between the magnitudes 0 .5 1 1.5 2 3 4 6; ties go to the even code.
    static constexpr float mid[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    std::uint8_t c = 0;
    while (c < 7 && (a > mid[c] || (a == mid[c] && (c & 1u)))) ++c;
    return static_cast<std::uint8_t>(c | (std::signbit(v) && c != 0 ? 8u : 0u));
  }

  static void quantize(const float* x, block& b) noexcept {
    float amax = 0.0f;
    for (index i = 0; i < 32; ++i) amax = std::max(amax, std::abs(x[i]));
    int e = 0;
    if (amax > 0.0f) {
      int p = 0;
      const float frac = std::frexp(amax / 6.0f, &p);  // amax / 6 = frac · 2^p, frac in [0.5, 1)
      const int up = frac == 0.5f ? p - 1 : p;          // ceil(log2(amax / 6))
      e = std::clamp(127 + up, 0, 254);
    }
    b.e = static_cast<std::uint8_t>(e);
    const float s = scale(b.e);
    for (index j = 0; j < 16; ++j) {
      b.qs[j] = static_cast<std::uint8_t>(encode(x[j] / s) | (encode(x[j + 16] / s) << 4));
    }
  }
  static void dequantize(const block& b, float* y) noexcept {
    const float h = std::ldexp(1.0f, static_cast<int>(b.e) - 128);  // half the scale: codes are doubled
    for (index j = 0; j < 16; ++j) {
      y[j] = h * static_cast<float>(doubled[b.qs[j] & 0x0f]);
      y[j + 16] = h * static_cast<float>(doubled[b.qs[j] >> 4]);
    }
  }
  static bool scales_finite(const block& b) noexcept { return b.e != 255; }
};
static_assert(block_format<mxfp4>);

}  // namespace moe::formats
