// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Dense expert weights where a checkpoint keeps them: E matrices of `rows × cols` (outputs ×
// inputs) in fp32, bf16 or fp16, stacked with any strides or one tensor per expert, read in place
// (typically from a mapped file) by the banks' packing. This is how moe::io's checkpoint loader
// hands tensors to a bank without stacking or converting them first (docs/architecture.md,
// "Loading checkpoints").

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "moe/config.hpp"
#include "moe/core/bf16.hpp"
#include "moe/core/error.hpp"
#include "moe/core/f16.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace moe {

/// Element types of dense weights in checkpoints.
enum class element_type : std::uint8_t { f32, bf16, f16 };

/// Bytes of one element of `t`.
constexpr std::size_t element_bytes(element_type t) noexcept { return t == element_type::f32 ? 4 : 2; }

/// The safetensors / GGUF name of `t` ("F32", "BF16", "F16").
constexpr const char* element_name(element_type t) noexcept {
  return t == element_type::f32 ? "F32" : t == element_type::bf16 ? "BF16" : "F16";
}

/// E matrices `[rows × cols]` (output × input) in memory: element (e, r, c) of expert e is at
/// `base(e) + r·row_stride + c·col_stride` (strides in elements), where `base(e)` is
/// `per_expert[e]` when given (one tensor per expert) and `data + e·expert_stride` otherwise.
/// A stacked row-major tensor `[E, out, in]` has strides (out·in, in, 1); one stored as
/// `[E, in, out]` (gpt-oss, Llama 4) has (in·out, 1, out). The memory is not owned.
struct weight_source {
  element_type type = element_type::f32;
  index experts = 0;  ///< E
  index rows = 0;     ///< outputs of each matrix
  index cols = 0;     ///< inputs of each matrix
  const void* data = nullptr;
  std::vector<const void*> per_expert = {};
  index expert_stride = 0, row_stride = 0, col_stride = 1;
  /// The memory is a read-only file mapping whose pages the bank may drop from the process's
  /// resident set once it has packed an expert (madvise MADV_DONTNEED: the page cache keeps
  /// them; a later read maps them again). A load then holds about one expert of the file at a
  /// time besides the packed bank. Never set it for memory that is not a file mapping.
  bool release_after_packing = false;

  /// A stacked row-major tensor `[E·rows × cols]` (or `[E, rows, cols]`) of type `t`.
  static weight_source stacked(element_type t, const void* data, index experts, index rows, index cols) {
    return {.type = t, .experts = experts, .rows = rows, .cols = cols, .data = data, .expert_stride = rows * cols, .row_stride = cols};
  }
  /// A stacked tensor stored transposed, `[E, cols, rows]` (input-major per expert).
  static weight_source stacked_transposed(element_type t, const void* data, index experts, index rows, index cols) {
    return {.type = t, .experts = experts, .rows = rows, .cols = cols, .data = data, .expert_stride = rows * cols,
            .row_stride = 1, .col_stride = rows};
  }
  /// One row-major `[rows × cols]` tensor per expert.
  static weight_source separate(element_type t, std::vector<const void*> bases, index rows, index cols) {
    const auto E = static_cast<index>(bases.size());
    return {.type = t, .experts = E, .rows = rows, .cols = cols, .per_expert = std::move(bases), .row_stride = cols};
  }

  /// Bytes from base(e) to the last element of expert e.
  [[nodiscard]] std::size_t expert_extent() const noexcept {
    if (rows == 0 || cols == 0) return 0;
    return static_cast<std::size_t>((rows - 1) * row_stride + (cols - 1) * col_stride + 1) * element_bytes(type);
  }

  [[nodiscard]] const std::byte* base(index e) const noexcept {
    if (!per_expert.empty()) return static_cast<const std::byte*>(per_expert[static_cast<std::size_t>(e)]);
    return static_cast<const std::byte*>(data) + static_cast<std::size_t>(e * expert_stride) * element_bytes(type);
  }
};

namespace detail {
/// Element reader of one expert of a weight_source: `(r, c)` gives a float (f32, f16) or a
/// moe::bf16 (kept as bits, so that a bf16 bank packs bf16 weights unchanged).
template <class T>
struct source_elements {
  const T* p;
  index rs, cs;
  MOE_FORCEINLINE auto operator()(index r, index c) const noexcept {
    if constexpr (std::is_same_v<T, f16>) {
      return static_cast<float>(p[r * rs + c * cs]);
    } else {
      return p[r * rs + c * cs];
    }
  }
};

/// Calls `f(source_elements<T>)` for expert e of `s`, with T its element type.
template <class F>
MOE_FORCEINLINE decltype(auto) with_source(const weight_source& s, index e, F&& f) {
  const std::byte* b = s.base(e);
  switch (s.type) {
    case element_type::bf16: return f(source_elements<bf16>{reinterpret_cast<const bf16*>(b), s.row_stride, s.col_stride});
    case element_type::f16: return f(source_elements<f16>{reinterpret_cast<const f16*>(b), s.row_stride, s.col_stride});
    case element_type::f32:
    default: return f(source_elements<float>{reinterpret_cast<const float*>(b), s.row_stride, s.col_stride});
  }
}

/// Drops the whole pages of expert e's memory in `s` from the resident set when the source says
/// it may (weight_source::release_after_packing); a no-op elsewhere.
inline void release_packed(const weight_source& s, index e) noexcept {
#if defined(__unix__) || defined(__APPLE__)
  if (!s.release_after_packing) return;
  static const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(s.base(e));
  const std::uintptr_t first = (begin + page - 1) / page * page, last = (begin + s.expert_extent()) / page * page;
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
#else
  (void)s;
  (void)e;
#endif
}

/// Checks that `s` holds `experts` matrices of `rows × cols` with non-negative strides and, for
/// per-expert sources, one non-null base per expert; throws moe::error naming `name`.
inline void check_source(const char* where, const char* name, const weight_source& s, index experts, index rows, index cols) {
  check_extent(where, concat(name, ".experts"), s.experts, experts);
  check_extent(where, concat(name, ".rows"), s.rows, rows);
  check_extent(where, concat(name, ".cols"), s.cols, cols);
  if (s.row_stride < 0 || s.col_stride < 0 || s.expert_stride < 0) {
    fail_parameter(error_id::shape, where, concat(name, " strides"), ">= 0", std::min({s.row_stride, s.col_stride, s.expert_stride}));
  }
  if (!s.per_expert.empty()) {
    check_extent(where, concat(name, ".per_expert.size()"), static_cast<index>(s.per_expert.size()), experts);
    for (const void* p : s.per_expert) {
      if (!p) fail_parameter(error_id::shape, where, concat(name, ".per_expert[e]"), "non-null", "null");
    }
  } else if (experts > 0 && !s.data) {
    fail_parameter(error_id::shape, where, concat(name, ".data"), "non-null", "null");
  }
}
}  // namespace detail

}  // namespace moe
