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
/// `1.1 * 100 / 2 = 55.00000000000001` (docs/routing-spec.md §1.2, errata 1): `ceil(x - 1e-9·max(1, |x|))`.
/// Compute `x` in double; in float the guard does nothing. Saturates to the index range (NaN: 0).
[[nodiscard]] inline index capacity_ceil(double x) noexcept {
  if (std::isinf(x)) return detail::saturated_index(x);  // the guard would make inf - inf
  return detail::saturated_index(std::ceil(x - 1e-9 * std::max(1.0, std::abs(x))));
}

/// Integer capacity `floor(x)`, guarded the other way (`floor(x + 1e-9·max(1, |x|))`) so that
/// `x = 1.9999999999999998` gives 2 (expert choice's `k_c`, docs/routing-spec.md §6, errata 1).
/// Saturates to the index range (NaN: 0).
[[nodiscard]] inline index capacity_floor(double x) noexcept {
  if (std::isinf(x)) return detail::saturated_index(x);
  return detail::saturated_index(std::floor(x + 1e-9 * std::max(1.0, std::abs(x))));
}

/// Integer capacity `round(x)` with ties to even, as Python's `round()` (flaxformer / T5X compute
/// `int(round(cf * T / E))`): no guard, so `2.5` gives 2 and `3.5` gives 4. Saturates (NaN: 0).
[[nodiscard]] inline index capacity_round(double x) noexcept {
  if (std::isinf(x)) return detail::saturated_index(x);
  double r = std::round(x);                                        // ties away from zero
  if (std::abs(x - std::trunc(x)) == 0.5) r = 2.0 * std::round(x / 2.0);  // ties to even
  return detail::saturated_index(r);
}

/// How an expert's capacity follows from the capacity factor (docs/routing-spec.md §5.4). The
/// conventions differ in rounding and in whether the number of slots K enters; a model ported
/// from one framework drops the same assignments only under that framework's convention.
enum class capacity_convention {
  /// `ceil(cf · T · K / E)`, guarded (errata 1): GShard, DeepSpeed, Megatron-Core, Tutel;
  /// moe::capacity's default.
  gshard_ceil,
  /// `round(cf · T / E)` with ties to even and no factor K: flaxformer / T5X Switch and
  /// experts-choose routers (`max(int(round(cf * T / E)), min_expert_capacity)`).
  switch_round,
  /// `floor(cf · T / E)`, guarded (errata 1): expert choice's `k_c` (Zhou et al.);
  /// moe::expert_choice's default.
  expert_choice_floor
};

/// The name of a convention, for messages and statistics.
[[nodiscard]] constexpr const char* to_string(capacity_convention c) noexcept {
  switch (c) {
    case capacity_convention::gshard_ceil: return "gshard_ceil";
    case capacity_convention::switch_round: return "switch_round";
    case capacity_convention::expert_choice_floor: return "expert_choice_floor";
  }
  return "?";
}

/// Places per expert before any clamping, for T tokens with K slots each over E experts, under
/// convention `c` (`K` enters gshard_ceil only). The product is formed in double in the order the
/// frameworks use: `cf · T · K / E` and `cf · T / E`.
[[nodiscard]] inline index convention_capacity(capacity_convention c, double factor, index T, index K,
                                               index E) noexcept {
  const auto t = static_cast<double>(T), e = static_cast<double>(E);
  switch (c) {
    case capacity_convention::gshard_ceil: return capacity_ceil(factor * t * static_cast<double>(K) / e);
    case capacity_convention::switch_round: return capacity_round(factor * t / e);
    case capacity_convention::expert_choice_floor: return capacity_floor(factor * t / e);
  }
  return 0;
}

}  // namespace moe
