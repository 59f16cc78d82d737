// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cmath>

#include "moe/config.hpp"

namespace moe {

/// Integer capacity `ceil(x)` of a real-valued capacity, guarded against products such as
/// `1.1 * 100 / 2 = 55.00000000000001` (routing-spec §1.2, errata 1): `ceil(x - 1e-9·max(1, |x|))`.
/// Compute `x` in double; in float the guard does nothing.
[[nodiscard]] inline index capacity_ceil(double x) noexcept {
  return static_cast<index>(std::ceil(x - 1e-9 * std::max(1.0, std::abs(x))));
}

/// Integer capacity `floor(x)`, guarded the other way (`floor(x + 1e-9·max(1, |x|))`) so that
/// `x = 1.9999999999999998` gives 2 (expert choice's `k_c`, routing-spec §6, errata 1).
[[nodiscard]] inline index capacity_floor(double x) noexcept {
  return static_cast<index>(std::floor(x + 1e-9 * std::max(1.0, std::abs(x))));
}

}  // namespace moe
