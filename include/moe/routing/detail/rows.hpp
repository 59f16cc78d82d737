// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// Row helpers shared by the router policies: the NaN policy on one row of logits (with an error
// message that names the policy, the parameter and its option) and the copy of caller-supplied
// logits that route_logits() works on.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string_view>

#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gating.hpp"
#include "moe/routing/routers/gates.hpp"

namespace moe::detail {

/// How a NaN error names its source: `<where>: parameter '<param>' gives a NaN <value> (token t,
/// expert e); expected <expected>, or set <option> = moe::nan_policy::to_neg_inf`.
struct nan_source {
  std::string_view where;                                ///< "moe::top_k::route"
  std::string_view param;                                ///< "x" (route) or "z" (route_logits)
  std::string_view option;                               ///< "top_k_options::nan"
  std::string_view value = "router logit";               ///< what is NaN
  std::string_view expected = "finite or ±inf logits";  ///< what is expected instead
};

/// Applies `nan` to a row `z[0..n)` of token t: nothing without NaN; NaN -> -inf with
/// nan_policy::to_neg_inf; else throws moe::error (input) naming `source`, the token and the
/// first NaN entry.
inline void apply_nan_policy(float* z, index n, index t, nan_policy nan, const nan_source& source) {
  if (!kernels::has_nan(z, n)) return;
  if (nan == nan_policy::to_neg_inf) {
    kernels::nan_to_neg_inf(z, n);
    return;
  }
  index e = 0;
  while (!std::isnan(z[e])) ++e;
  throw_error(error_id::input, concat(source.where, ": parameter '", source.param, "' gives a NaN ", source.value,
                                      " (token ", t, ", expert ", e, "); expected ", source.expected, ", or set ",
                                      source.option, " = moe::nan_policy::to_neg_inf"));
}

/// Copies the rows `[begin, end)` of `z` into `out` (row stride z.cols()).
inline void copy_rows(const_matrix_map<float> z, index begin, index end, float* out) noexcept {
  const index C = z.cols();
  for (index t = begin; t < end; ++t) std::copy_n(z.data() + t * z.outerStride(), C, out + t * C);
}

/// A contiguous copy `[T × C]` of caller-supplied logits `z`, in the workspace (at least one
/// float, so that T = 0 is legal): route_logits() modifies its rows in place (NaN policy,
/// temperature).
[[nodiscard]] inline float* copy_logits(const_matrix_map<float> z, workspace& ws) {
  float* out = ws.take<float>(static_cast<std::size_t>(std::max<index>(z.rows() * z.cols(), 1)));
  copy_rows(z, 0, z.rows(), out);
  return out;
}

}  // namespace moe::detail
