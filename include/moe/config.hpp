// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <cstddef>
#include <cstdint>

#include "moe/version.hpp"

/// Forces inlining of small hot functions (kernels, accessors).
#if defined(__GNUC__) || defined(__clang__)
#define MOE_FORCEINLINE inline __attribute__((always_inline))
#define MOE_NOINLINE __attribute__((noinline))
#define MOE_RESTRICT __restrict__
#else
#define MOE_FORCEINLINE inline
#define MOE_NOINLINE
#define MOE_RESTRICT
#endif

/// Set when the translation unit is compiled without exception support; moe then aborts on errors.
#if !defined(MOE_NO_EXCEPTIONS) && !defined(__cpp_exceptions) && !defined(__EXCEPTIONS)
#define MOE_NO_EXCEPTIONS
#endif

namespace moe {
/// Signed index type used for every extent and position (the same as Eigen::Index).
using index = std::ptrdiff_t;

/// Alignment in bytes of every buffer the library allocates (one cache line, one AVX-512 register).
inline constexpr std::size_t buffer_alignment = 64;
}  // namespace moe
