// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/formats/ and core/f16.hpp: binary16 conversions (exhaustive), each block
// format's byte layout (golden blocks decoded by hand), quantise -> dequantise within the
// documented bound, and the checks of tensors given as bytes.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/core/f16.hpp>
#include <moe/formats/mxfp4.hpp>
#include <moe/formats/q4_0.hpp>
#include <moe/formats/q4_k.hpp>
#include <moe/formats/q6_k.hpp>
#include <moe/formats/q8_0.hpp>

#include "../support/random.hpp"

namespace {
using moe::index;
namespace fm = moe::formats;

TEST_CASE("f16: every binary16 value converts to float exactly and back", "[formats][f16]") {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float x = moe::f16::to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(x)) {
      CHECK(std::isnan(moe::f16::to_float(moe::f16::from_float(x))));
      continue;
    }
    INFO("bits " << h);
    CHECK(moe::f16::from_float(x) == h);
  }
  CHECK(moe::f16::to_float(0x3c00) == 1.0f);
  CHECK(moe::f16::to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(moe::f16::to_float(0x7bff) == 65504.0f);
}

TEST_CASE("f16: rounding from float is to nearest, ties to even", "[formats][f16]") {
  CHECK(moe::f16::from_float(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);  // tie -> even (1.0)
  CHECK(moe::f16::from_float(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(moe::f16::from_float(65519.0f) == 0x7bff);
  CHECK(moe::f16::from_float(65520.0f) == 0x7c00);  // rounds to inf
  CHECK(moe::f16::from_float(std::ldexp(1.0f, -25)) == 0x0000);  // half the smallest subnormal: tie to 0
  CHECK(moe::f16::from_float(std::ldexp(1.5f, -25)) == 0x0001);
  CHECK(moe::f16::from_float(-0.0f) == 0x8000);
#ifdef __FLT16_MAX__
  // Against the compiler's own conversion on random floats of every magnitude.
  moe_test::rng rng(3);
  for (int i = 0; i < 200000; ++i) {
    const float x = std::ldexp(rng.uniform(-1.0f, 1.0f), rng.integer(-30, 17));
    const _Float16 h = static_cast<_Float16>(x);
    std::uint16_t bits;
    std::memcpy(&bits, &h, 2);
    INFO("x = " << x);
    CHECK(moe::f16::from_float(x) == bits);
  }
#endif
}

template <class F>
std::vector<float> roundtrip(const std::vector<float>& x) {
  std::vector<std::byte> bytes(fm::row_bytes<F>(static_cast<index>(x.size())));
  fm::quantize_rows<F>("test", "x", x.data(), 1, static_cast<index>(x.size()), static_cast<index>(x.size()), bytes.data());
  std::vector<float> y(x.size());
  fm::dequantize_rows<F>(bytes.data(), 1, static_cast<index>(x.size()), y.data(), static_cast<index>(x.size()));
  return y;
}

// Random blocks of several shapes: uniform, one outlier, all equal, all zero, a negative extreme.
std::vector<std::vector<float>> sample_blocks(index n, std::uint64_t seed) {
  moe_test::rng rng(seed);
  std::vector<std::vector<float>> out;
  for (int rep = 0; rep < 40; ++rep) {
    std::vector<float> v(static_cast<std::size_t>(n));
    const float scale = std::ldexp(1.0f, rng.integer(-8, 8));
    for (auto& x : v) x = rng.uniform(-scale, scale);
    if (rep % 5 == 1) v[static_cast<std::size_t>(rng.integer(0, static_cast<int>(n) - 1))] = 20 * scale;
    if (rep % 5 == 2) std::fill(v.begin(), v.end(), scale);
    if (rep % 5 == 3) std::fill(v.begin(), v.end(), 0.0f);
    if (rep % 5 == 4) v[0] = -20 * scale;
    out.push_back(v);
  }
  return out;
}

TEST_CASE("Q8_0: layout, golden block and round-trip bound", "[formats][q8_0]") {
  static_assert(sizeof(fm::q8_0::block) == 34);
  fm::q8_0::block b{};
  b.d = moe::f16::from_float(0.25f);
  b.qs[0] = -127;
  b.qs[5] = 3;
  b.qs[31] = 100;
  float y[32];
  fm::q8_0::dequantize(b, y);
  CHECK(y[0] == -31.75f);
  CHECK(y[5] == 0.75f);
  CHECK(y[31] == 25.0f);
  CHECK(y[1] == 0.0f);
  for (const auto& x : sample_blocks(32, 11)) {
    const auto y2 = roundtrip<fm::q8_0>(x);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::abs(v));
    const float d = moe::f16::to_float(moe::f16::from_float(amax / 127.0f));
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - y2[i]) <= d / 2 + amax * 0x1p-10f);
  }
}

TEST_CASE("Q4_0: layout (low nibbles first half, high nibbles second), golden block, bound", "[formats][q4_0]") {
  static_assert(sizeof(fm::q4_0::block) == 18);
  fm::q4_0::block b{};
  b.d = moe::f16::from_float(-0.5f);
  b.qs[0] = 0x0f | (0x00 << 4);  // element 0: code 15 -> 7; element 16: code 0 -> -8
  b.qs[3] = 0x08 | (0x09 << 4);  // element 3: 0; element 19: 1
  float y[32];
  fm::q4_0::dequantize(b, y);
  CHECK(y[0] == -3.5f);
  CHECK(y[16] == 4.0f);
  CHECK(y[3] == 0.0f);
  CHECK(y[19] == -0.5f);
  for (const auto& x : sample_blocks(32, 12)) {
    const auto y2 = roundtrip<fm::q4_0>(x);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::abs(v));
    const float d = std::abs(moe::f16::to_float(moe::f16::from_float(amax / 8.0f)));
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - y2[i]) <= d + amax * 0x1p-10f);
  }
}

TEST_CASE("MXFP4: E2M1 codes, E8M0 scale, golden block, no saturation, bound", "[formats][mxfp4]") {
  static_assert(sizeof(fm::mxfp4::block) == 17);
  fm::mxfp4::block b{};
  b.e = 127 + 2;  // scale 4
  b.qs[0] = 0x7 | (0xf << 4);   // element 0: 6 * 4 = 24; element 16: -6 * 4 = -24
  b.qs[1] = 0x1 | (0x9 << 4);   // element 1: 0.5 * 4 = 2; element 17: -2
  b.qs[2] = 0x5;                // element 2: 3 * 4 = 12; element 18: 0
  float y[32];
  fm::mxfp4::dequantize(b, y);
  CHECK(y[0] == 24.0f);
  CHECK(y[16] == -24.0f);
  CHECK(y[1] == 2.0f);
  CHECK(y[17] == -2.0f);
  CHECK(y[2] == 12.0f);
  CHECK(y[18] == 0.0f);
  CHECK(fm::mxfp4::encode(5.0f) == 6);   // tie between 4 (code 6) and 6 (code 7): the even code
  CHECK(fm::mxfp4::encode(-1.25f) == (8 | 2));  // tie between 1 (code 2) and 1.5 (code 3)
  for (const auto& x : sample_blocks(32, 13)) {
    const auto y2 = roundtrip<fm::mxfp4>(x);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::abs(v));
    std::vector<std::byte> bytes(fm::mxfp4::block_bytes);
    fm::quantize_rows<fm::mxfp4>("t", "x", x.data(), 1, 32, 32, bytes.data());
    const float scale = fm::mxfp4::scale(std::to_integer<std::uint8_t>(bytes[0]));
    CHECK(amax <= 6 * scale);  // nothing saturates
    for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - y2[i]) <= scale);
  }
}

TEST_CASE("Q4_K: 6-bit scale/min packing, golden block, bound", "[formats][q4_k]") {
  static_assert(sizeof(fm::q4_k::block) == 144);
  fm::q4_k::block b{};
  b.d = moe::f16::from_float(0.5f);
  b.dmin = moe::f16::from_float(0.25f);
  // Sub-block 1: sc = 3, m = 2 (bytes 1 and 5, low 6 bits). Sub-block 6: sc = 37 = 0b100101,
  // m = 50 = 0b110010: low 4 bits in byte 10 (0x5 | 0x2 << 4), high 2 bits at bits 6-7 of bytes
  // 2 and 6.
  b.scales[1] = 3;
  b.scales[5] = 2;
  b.scales[10] = 0x05 | (0x02 << 4);
  b.scales[2] = static_cast<std::uint8_t>(0x2 << 6);
  b.scales[6] = static_cast<std::uint8_t>(0x3 << 6);
  // Element 32 + 4 (sub-block 1, chunk 0 high nibble): code 9; element 192 + 7 (sub-block 6,
  // chunk 3 low nibble): code 14.
  b.qs[4] = static_cast<std::uint8_t>(9 << 4);
  b.qs[96 + 7] = 14;
  float y[256];
  fm::q4_k::dequantize(b, y);
  CHECK(y[36] == 0.5f * 3 * 9 - 0.25f * 2);     // 13
  CHECK(y[199] == 0.5f * 37 * 14 - 0.25f * 50);  // 246.5
  CHECK(y[0] == 0.0f);                           // sub-block 0: sc = m = 0
  CHECK(y[200] == 0.5f * 37 * 0 - 0.25f * 50);
  for (const auto& x : sample_blocks(256, 14)) {
    const auto y2 = roundtrip<fm::q4_k>(x);
    std::vector<std::byte> bytes(fm::q4_k::block_bytes);
    fm::quantize_rows<fm::q4_k>("t", "x", x.data(), 1, 256, 256, bytes.data());
    fm::q4_k::block q;
    std::memcpy(&q, bytes.data(), sizeof q);
    const float d = moe::f16::to_float(q.d), dmin = moe::f16::to_float(q.dmin);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::abs(v));
    for (index j = 0; j < 8; ++j) {
      std::uint8_t sc, m;
      fm::q4_k::scale_min(q.scales, j, sc, m);
      for (index i = 0; i < 32; ++i) {
        const auto e = static_cast<std::size_t>(32 * j + i);
        CHECK(std::abs(x[e] - y2[e]) <= d * sc / 2 + dmin / 2 + 7.5f * d + amax * 0x1p-9f);
      }
    }
  }
}

TEST_CASE("Q6_K: ql/qh/scales layout, golden block, bound", "[formats][q6_k]") {
  static_assert(sizeof(fm::q6_k::block) == 210);
  fm::q6_k::block b{};
  b.d = moe::f16::from_float(0.125f);
  b.scales[0] = 4;
  b.scales[6] = -3;   // sub-block 6: elements 96..111
  b.scales[15] = 10;  // sub-block 15: elements 240..255
  // Element 0: code 0b10_0001 = 33 -> 1 (ql[0] low nibble 1, qh[0] bits 0-1 = 2).
  b.ql[0] = 0x01;
  b.qh[0] = 0x02;
  // Element 96 (half 0, l = 0, fourth quarter): high nibble of ql[32], bits 6-7 of qh[0]: code
  // 0b01_0101 = 21 -> -11.
  b.ql[32] = static_cast<std::uint8_t>(0x5 << 4);
  b.qh[0] |= static_cast<std::uint8_t>(0x1 << 6);
  // Element 255 (half 1, l = 31, fourth quarter): high nibble of ql[64 + 63], bits 6-7 of qh[63]: code 63 -> 31.
  b.ql[127] = static_cast<std::uint8_t>(0xf << 4);
  b.qh[63] = static_cast<std::uint8_t>(0x3 << 6);
  float y[256];
  fm::q6_k::dequantize(b, y);
  CHECK(y[0] == 0.125f * 4 * 1);
  CHECK(y[96] == 0.125f * -3 * -11);
  CHECK(y[255] == 0.125f * 10 * 31);
  CHECK(y[1] == 0.125f * 4 * -32);  // code 0
  for (const auto& x : sample_blocks(256, 15)) {
    const auto y2 = roundtrip<fm::q6_k>(x);
    std::vector<std::byte> bytes(fm::q6_k::block_bytes);
    fm::quantize_rows<fm::q6_k>("t", "x", x.data(), 1, 256, 256, bytes.data());
    fm::q6_k::block q;
    std::memcpy(&q, bytes.data(), sizeof q);
    const float d = moe::f16::to_float(q.d);
    float amax = 0;
    for (float v : x) amax = std::max(amax, std::abs(v));
    for (index e = 0; e < 256; ++e) {
      const auto i = static_cast<std::size_t>(e);
      CHECK(std::abs(x[i] - y2[i]) <= d * q.scales[e / 16] / 2 + 15.5f * d + amax * 0x1p-9f);
    }
  }
}

TEST_CASE("formats: ragged rows are zero-padded to whole blocks", "[formats]") {
  moe_test::rng rng(5);
  std::vector<float> x(45);
  for (auto& v : x) v = rng.uniform();
  CHECK(fm::row_bytes<fm::q8_0>(45) == 2 * 34);
  CHECK(fm::row_bytes<fm::q4_k>(45) == 144);
  const auto y = roundtrip<fm::q8_0>(x);
  for (std::size_t i = 0; i < x.size(); ++i) CHECK(std::abs(x[i] - y[i]) < 0.01f);
}

TEST_CASE("formats: tensors of the wrong size, shape or scales, and non-finite weights, are errors", "[formats][error]") {
  std::vector<std::byte> bytes(4 * fm::row_bytes<fm::q4_0>(64));
  CHECK_NOTHROW(fm::check_tensor<fm::q4_0>("load", "blk.0.ffn_up_exps", 4, 64, bytes));
  CHECK_THROWS_WITH(fm::check_tensor<fm::q4_0>("load", "blk.0.ffn_up_exps", 4, 64, std::span(bytes).first(bytes.size() - 1)),
                    Catch::Contains("parameter 'blk.0.ffn_up_exps bytes' must be 144 (4 x 64 Q4_0), got 143"));
  CHECK_THROWS_WITH(fm::check_tensor<fm::q4_k>("load", "w", 1, 96, std::span(bytes).first(144)),
                    Catch::Contains("parameter 'w columns' must be a multiple of 256 (the Q4_K block), got 96"));
  // A NaN scale in block 5 (row 2).
  const std::uint16_t nan16 = 0x7e00;
  std::memcpy(bytes.data() + 5 * 18, &nan16, 2);
  CHECK_THROWS_WITH(fm::check_tensor<fm::q4_0>("load", "w", 4, 64, bytes),
                    Catch::Contains("parameter 'w block 5 (row 2)' must be finite scales"));
  std::vector<std::byte> mx(fm::mxfp4::block_bytes);
  mx[0] = std::byte{255};
  CHECK_THROWS_WITH(fm::check_tensor<fm::mxfp4>("load", "w", 1, 32, mx), Catch::Contains("finite scales"));
  std::vector<float> x(32, 1.0f);
  x[7] = std::numeric_limits<float>::infinity();
  std::vector<std::byte> out(34);
  CHECK_THROWS_WITH(fm::quantize_rows<fm::q8_0>("q", "gate", x.data(), 1, 32, 32, out.data()),
                    Catch::Contains("parameter 'gate' has a non-finite value inf at (0, 7)"));
  x[7] = 1e10f;  // the fp16 scale would overflow
  CHECK_THROWS_WITH(fm::quantize_rows<fm::q8_0>("q", "gate", x.data(), 1, 32, 32, out.data()),
                    Catch::Contains("scale is finite"));
}

}  // namespace
