// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Block weight formats (docs/numerics.md §10): GGUF's quantized types with ggml's exact block
// layouts, so that the bytes of a GGUF tensor are used as they are. A format is one struct in one
// file (formats/q8_0.hpp, q4_0.hpp, mxfp4.hpp, q4_k.hpp, q6_k.hpp) that models
// moe::block_format:
//   name, ggml_type (GGML's type id), block_values (values per block), block_bytes,
//   `block` (the byte layout, sizeof == block_bytes),
//   quantize(const float* x, block&)   round to nearest from block_values floats (documented per
//                                      format; every x finite),
//   dequantize(const block&, float* y) the exact value of each element: the reference of every
//                                      kernel,
//   scales_finite(const block&)        whether the block's scales are finite numbers.
// Rows of `cols` values are stored as ceil(cols / block_values) consecutive blocks; a row whose
// length the block does not divide is zero-padded when quantised here, and refused when it comes
// as a tensor's bytes (GGUF requires whole blocks).

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string_view>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/error.hpp"

namespace moe {

template <class F>
concept block_format = requires(const float* x, float* y, typename F::block& b, const typename F::block& cb) {
  { F::name } -> std::convertible_to<std::string_view>;
  { F::ggml_type } -> std::convertible_to<int>;
  { F::block_values } -> std::convertible_to<index>;
  { F::block_bytes } -> std::convertible_to<std::size_t>;
  F::quantize(x, b);
  F::dequantize(cb, y);
  { F::scales_finite(cb) } -> std::convertible_to<bool>;
} && sizeof(typename F::block) == F::block_bytes;

namespace formats {

/// Blocks of one row of `cols` values (the last one zero-padded when the block does not divide).
template <block_format F>
constexpr index blocks_per_row(index cols) noexcept {
  return (cols + F::block_values - 1) / F::block_values;
}

/// Bytes of one row of `cols` values.
template <block_format F>
constexpr std::size_t row_bytes(index cols) noexcept {
  return static_cast<std::size_t>(blocks_per_row<F>(cols)) * F::block_bytes;
}

/// Block `i` of a byte array (read with memcpy: tensor bytes need no alignment).
template <block_format F>
typename F::block load_block(const std::byte* data, index i) noexcept {
  typename F::block b;
  std::memcpy(&b, data + static_cast<std::size_t>(i) * F::block_bytes, F::block_bytes);
  return b;
}

/// Quantises `rows × cols` floats (row stride ldx) into `rows · row_bytes(cols)` bytes. Throws
/// moe::error naming `param` and the element when a value is not finite.
template <block_format F>
void quantize_rows(std::string_view where, std::string_view param, const float* x, index rows, index cols, index ldx,
                   std::byte* out) {
  const index nb = blocks_per_row<F>(cols);
  float buf[F::block_values];
  for (index r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    for (index c = 0; c < cols; ++c) {
      if (!std::isfinite(row[c])) {
        detail::throw_error(error_id::input, detail::concat(where, ": parameter '", param, "' has a non-finite value ",
                                                            row[c], " at (", r, ", ", c, "); ", F::name,
                                                            " quantises finite weights only"));
      }
    }
    for (index b = 0; b < nb; ++b) {
      const index c0 = b * F::block_values, n = std::min<index>(F::block_values, cols - c0);
      std::fill(std::begin(buf), std::end(buf), 0.0f);
      std::copy_n(row + c0, n, buf);
      typename F::block blk;
      F::quantize(buf, blk);
      if (!F::scales_finite(blk)) {
        detail::fail_parameter(error_id::input, where, detail::concat(param, " row ", r, " block ", b),
                               detail::concat("values whose ", F::name, " scale is finite"), "a scale that overflows");
      }
      std::memcpy(out + (static_cast<std::size_t>(r * nb + b)) * F::block_bytes, &blk, F::block_bytes);
    }
  }
}

/// Dequantises `rows × cols` values (the inverse layout of quantize_rows) into y (row stride ldy).
template <block_format F>
void dequantize_rows(const std::byte* data, index rows, index cols, float* y, index ldy) noexcept {
  const index nb = blocks_per_row<F>(cols);
  float buf[F::block_values];
  for (index r = 0; r < rows; ++r) {
    for (index b = 0; b < nb; ++b) {
      F::dequantize(load_block<F>(data, r * nb + b), buf);
      const index c0 = b * F::block_values, n = std::min<index>(F::block_values, cols - c0);
      std::copy_n(buf, n, y + r * ldy + c0);
    }
  }
}

/// Checks a tensor given as bytes of format F: `cols` a multiple of the block (GGUF stores whole
/// blocks), `bytes == rows · row_bytes(cols)`, every block's scales finite. Throws moe::error
/// naming the tensor and the expected and actual values.
template <block_format F>
void check_tensor(std::string_view where, std::string_view tensor, index rows, index cols, std::span<const std::byte> bytes) {
  if (rows < 0 || cols < 1) {
    detail::fail_parameter(error_id::shape, where, detail::concat(tensor, " shape"), ">= 0 rows and >= 1 column",
                           detail::concat(rows, " x ", cols));
  }
  if (cols % F::block_values != 0) {
    detail::fail_parameter(error_id::shape, where, detail::concat(tensor, " columns"),
                           detail::concat("a multiple of ", F::block_values, " (the ", F::name, " block)"), cols);
  }
  const std::size_t rb = row_bytes<F>(cols);
  if (rows > 0 && static_cast<std::size_t>(rows) > std::numeric_limits<std::size_t>::max() / rb) {
    detail::fail_parameter(error_id::shape, where, detail::concat(tensor, " shape"), "a size that fits in memory",
                           detail::concat(rows, " x ", cols, " ", F::name, " (the byte size overflows)"));
  }
  const std::size_t want = static_cast<std::size_t>(rows) * rb;
  if (bytes.size() != want) {
    detail::fail_parameter(error_id::shape, where, detail::concat(tensor, " bytes"),
                           detail::concat(want, " (", rows, " x ", cols, " ", F::name, ")"), bytes.size());
  }
  const index blocks = rows * (cols / F::block_values);
  for (index i = 0; i < blocks; ++i) {
    if (!F::scales_finite(load_block<F>(bytes.data(), i))) {
      detail::fail_parameter(error_id::input, where, detail::concat(tensor, " block ", i, " (row ", i / (cols / F::block_values), ")"),
                             "finite scales", "a NaN or inf scale");
    }
  }
}

}  // namespace formats
}  // namespace moe
