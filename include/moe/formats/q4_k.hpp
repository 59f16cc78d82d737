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

/// GGUF Q4_K (GGML type 12): super-blocks of 256 values in 8 sub-blocks of 32. Each sub-block j
/// has a 6-bit scale sc_j and a 6-bit min m_j; the super-block has fp16 `d` and `dmin`. Value =
/// d·sc_j·c - dmin·m_j for the 4-bit code c. Layout (ggml's): d, dmin, scales[12] (sc and m
/// packed: bytes 0-3 hold sc_0..3 in their low 6 bits and the top 2 bits of sc_4..7; bytes 4-7
/// the same for m; bytes 8-11 the low 4 bits of sc_4..7 and, in their high nibble, of m_4..7),
/// qs[128]: for each 64-value chunk k, 32 bytes whose low nibbles are sub-block 2k and high nibbles
/// sub-block 2k + 1.
///
/// Quantiser (round to nearest, one pass): per sub-block lo_j = min(0, min x), step_j =
/// (max x - lo_j) / 15; d = fp16(max step / 63), dmin = fp16(max(-lo) / 63); sc_j =
/// round(step_j / d), m_j = round(-lo_j / dmin) (ties away from zero, in [0, 63]); c =
/// clamp(round((x + dmin·m_j) / (d·sc_j)), 0, 15). Error bound per element:
/// d·sc_j / 2 + dmin / 2 + 7.5·d + max|x| · 2^-9 (rounding of c, of m_j, of sc_j over 15 steps,
/// and of the fp16 scales).
struct q4_k {
  static constexpr std::string_view name = "Q4_K";
  static constexpr int ggml_type = 12;
  static constexpr index block_values = 256;
  static constexpr std::size_t block_bytes = 144;
  struct block {
    std::uint16_t d;     // fp16
    std::uint16_t dmin;  // fp16
    std::uint8_t scales[12];
    std::uint8_t qs[128];
  };

  /// Scale and min of sub-block j (0..7).
  static void scale_min(const std::uint8_t* q, index j, std::uint8_t& sc, std::uint8_t& m) noexcept {
    if (j < 4) {
      sc = q[j] & 63;
      m = q[j + 4] & 63;
    } else {
      sc = static_cast<std::uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
      m = static_cast<std::uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
  }

  static void quantize(const float* x, block& b) noexcept {
    float step[8], lo[8];
    float max_step = 0.0f, max_lo = 0.0f;
    for (index j = 0; j < 8; ++j) {
      float mn = 0.0f, mx = 0.0f;
      for (index i = 0; i < 32; ++i) {
        mn = std::min(mn, x[32 * j + i]);
        mx = std::max(mx, x[32 * j + i]);
      }
      lo[j] = mn;
      step[j] = (mx - mn) / 15.0f;
      max_step = std::max(max_step, step[j]);
      max_lo = std::max(max_lo, -mn);
    }
    b.d = f16::from_float(max_step / 63.0f);
    b.dmin = f16::from_float(max_lo / 63.0f);
    const float d = f16::to_float(b.d), dmin = f16::to_float(b.dmin);
    std::uint8_t sc[8], m[8];
    for (index j = 0; j < 8; ++j) {
      sc[j] = static_cast<std::uint8_t>(d > 0.0f ? std::clamp(std::round(step[j] / d), 0.0f, 63.0f) : 0.0f);
      m[j] = static_cast<std::uint8_t>(dmin > 0.0f ? std::clamp(std::round(-lo[j] / dmin), 0.0f, 63.0f) : 0.0f);
    }
    for (index j = 0; j < 4; ++j) {
      b.scales[j] = static_cast<std::uint8_t>(sc[j] | ((sc[j + 4] >> 4) << 6));
      b.scales[j + 4] = static_cast<std::uint8_t>(m[j] | ((m[j + 4] >> 4) << 6));
      b.scales[j + 8] = static_cast<std::uint8_t>((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
    }
    std::uint8_t c[256];
    for (index j = 0; j < 8; ++j) {
      const float s = d * static_cast<float>(sc[j]), off = dmin * static_cast<float>(m[j]);
      for (index i = 0; i < 32; ++i) {
        const float v = s > 0.0f ? std::round((x[32 * j + i] + off) / s) : 0.0f;
        c[32 * j + i] = static_cast<std::uint8_t>(std::clamp(v, 0.0f, 15.0f));
      }
    }
    for (index k = 0; k < 4; ++k) {
      for (index l = 0; l < 32; ++l) b.qs[32 * k + l] = static_cast<std::uint8_t>(c[64 * k + l] | (c[64 * k + 32 + l] << 4));
    }
  }
  static void dequantize(const block& b, float* y) noexcept {
    const float d = f16::to_float(b.d), dmin = f16::to_float(b.dmin);
    for (index k = 0; k < 4; ++k) {
      std::uint8_t sc0, m0, sc1, m1;
      scale_min(b.scales, 2 * k, sc0, m0);
      scale_min(b.scales, 2 * k + 1, sc1, m1);
      const float s0 = d * static_cast<float>(sc0), o0 = dmin * static_cast<float>(m0);
      const float s1 = d * static_cast<float>(sc1), o1 = dmin * static_cast<float>(m1);
      for (index l = 0; l < 32; ++l) {
        y[64 * k + l] = s0 * static_cast<float>(b.qs[32 * k + l] & 0x0f) - o0;
        y[64 * k + 32 + l] = s1 * static_cast<float>(b.qs[32 * k + l] >> 4) - o1;
      }
    }
  }
  static bool scales_finite(const block& b) noexcept {
    return (b.d & 0x7c00u) != 0x7c00u && (b.dmin & 0x7c00u) != 0x7c00u;
  }
};
static_assert(block_format<q4_k>);

}  // namespace moe::formats
