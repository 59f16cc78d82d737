// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>

#include "moe/config.hpp"

namespace moe {

namespace detail {
/// An integral double as an index, saturated to the index range (NaN gives 0): a capacity
/// factor of 1e300 must clamp to T, not overflow the conversion.
[[nodiscard]] inline index saturated_index(double c) noexcept {
  constexpr double limit = 9223372036854775808.0;  // 2^63
  static_assert(std::numeric_limits<index>::digits == 63, "moe: index is a 64-bit signed integer");
  if (std::isnan(c)) return 0;
  if (c >= limit) return std::numeric_limits<index>::max();
  if (c < -limit) return std::numeric_limits<index>::min();
  return static_cast<index>(c);
}
}  // namespace detail

/// Integer capacity `ceil(x)` of a real-valued capacity, guarded against products such as
/// `1.1 * 100 / 2 = 55.00000000000001` (routing-spec §1.2, errata 1): `ceil(x - 1e-9·max(1, |x|))`.
/// Compute `x` in double; in float the guard does nothing. Saturates to the index range (NaN: 0).
[[nodiscard]] inline index capacity_ceil(double x) noexcept {
  if (std::isinf(x)) return detail::saturated_index(x);  // the guard would make inf - inf
  return detail::saturated_index(std::ceil(x - 1e-9 * std::max(1.0, std::abs(x))));
}

/// Integer capacity `floor(x)`, guarded the other way (`floor(x + 1e-9·max(1, |x|))`) so that
/// `x = 1.9999999999999998` gives 2 (expert choice's `k_c`, routing-spec §6, errata 1).
/// Saturates to the index range (NaN: 0).
[[nodiscard]] inline index capacity_floor(double x) noexcept {
  if (std::isinf(x)) return detail::saturated_index(x);
  return detail::saturated_index(std::floor(x + 1e-9 * std::max(1.0, std::abs(x))));
}

}  // namespace moe
