// SPDX-License-Identifier: Apache-2.0
#pragma once

// Central finite differences for gradient tests of losses.

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

namespace moe_test {

/// Numerical gradient of `loss(params)` by central differences with step h (in double).
inline std::vector<double> numerical_gradient(const std::function<double(const std::vector<double>&)>& loss,
                                              std::vector<double> params, double h = 1e-5) {
  std::vector<double> g(params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const double keep = params[i];
    params[i] = keep + h;
    const double up = loss(params);
    params[i] = keep - h;
    const double down = loss(params);
    params[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/// Max over components of |a - b| / max(|b|, floor): the relative error used by gradient tests
/// (`floor` keeps near-zero components from dominating).
inline double max_relative_error(const std::vector<double>& a, const std::vector<double>& b,
                                 double floor = 1e-6) {
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(std::abs(b[i]), floor));
  }
  return worst;
}

}  // namespace moe_test
