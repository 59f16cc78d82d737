// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string_view>

#include "moe/core/f16.hpp"
#include "moe/formats/format.hpp"

namespace moe::formats {

/// GGUF Q6_K (GGML type 14): super-blocks of 256 values in 16 sub-blocks of 16, each with an int8
/// scale sc_j; one fp16 `d`. Value = d·sc_j·(c - 32) for the 6-bit code c. Layout (ggml's):
/// ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16], d. For each half h (128 values) and
/// l in 0..31, codes of elements l, l+32, l+64, l+96 of the half: low nibbles of ql[64h + l],
/// ql[64h + 32 + l], high nibbles of the same two bytes; their top two bits at bit 0, 2, 4, 6 of
/// qh[32h + l]. Sub-block j covers elements 16j .. 16j + 15.
///
/// Quantiser (round to nearest, one pass): s_j = max|x| of the sub-block / 31; d = fp16(max s_j /
/// 127); sc_j = round(s_j / d) in [0, 127]; c - 32 = clamp(round(x / (d·sc_j)), -32, 31) (ties
/// away from zero). Error bound per element: d·sc_j / 2 + 15.5·d + max|x| · 2^-9.
struct q6_k {
  static constexpr std::string_view name = "Q6_K";
  static constexpr int ggml_type = 14;
  static constexpr index block_values = 256;
  static constexpr std::size_t block_bytes = 210;
  struct block {
    std::uint8_t ql[128];
    std::uint8_t qh[64];
    std::int8_t scales[16];
    std::uint16_t d;  // fp16
  };

  static void quantize(const float* x, block& b) noexcept {
    float s[16], max_s = 0.0f;
    for (index j = 0; j < 16; ++j) {
      float a = 0.0f;
      for (index i = 0; i < 16; ++i) a = std::max(a, std::abs(x[16 * j + i]));
      s[j] = a / 31.0f;
      max_s = std::max(max_s, s[j]);
    }
    b.d = f16::from_float(max_s / 127.0f);
    const float d = f16::to_float(b.d);
    std::uint8_t c[256];
    for (index j = 0; j < 16; ++j) {
      const float sc = d > 0.0f ? std::clamp(std::round(s[j] / d), 0.0f, 127.0f) : 0.0f;
      b.scales[j] = static_cast<std::int8_t>(sc);
      const float step = d * sc;
      for (index i = 0; i < 16; ++i) {
        const float q = step > 0.0f ? std::round(x[16 * j + i] / step) : 0.0f;
        c[16 * j + i] = static_cast<std::uint8_t>(std::clamp(q, -32.0f, 31.0f) + 32.0f);
      }
    }
    for (index h = 0; h < 2; ++h) {
      const std::uint8_t* q = c + 128 * h;
      for (index l = 0; l < 32; ++l) {
        b.ql[64 * h + l] = static_cast<std::uint8_t>((q[l] & 0x0f) | ((q[l + 64] & 0x0f) << 4));
        b.ql[64 * h + 32 + l] = static_cast<std::uint8_t>((q[l + 32] & 0x0f) | ((q[l + 96] & 0x0f) << 4));
        b.qh[32 * h + l] = static_cast<std::uint8_t>((q[l] >> 4) | ((q[l + 32] >> 4) << 2) | ((q[l + 64] >> 4) << 4) |
                                                     ((q[l + 96] >> 4) << 6));
      }
    }
  }
  static void dequantize(const block& b, float* y) noexcept {
    const float d = f16::to_float(b.d);
    for (index h = 0; h < 2; ++h) {
      const std::uint8_t* ql = b.ql + 64 * h;
      const std::uint8_t* qh = b.qh + 32 * h;
      const std::int8_t* sc = b.scales + 8 * h;
      float* out = y + 128 * h;
      for (index l = 0; l < 32; ++l) {
        const index is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        out[l] = d * static_cast<float>(sc[is] * q1);
        out[l + 32] = d * static_cast<float>(sc[is + 2] * q2);
        out[l + 64] = d * static_cast<float>(sc[is + 4] * q3);
        out[l + 96] = d * static_cast<float>(sc[is + 6] * q4);
      }
    }
  }
  static bool scales_finite(const block& b) noexcept { return (b.d & 0x7c00u) != 0x7c00u; }
};
static_assert(block_format<q6_k>);

}  // namespace moe::formats
