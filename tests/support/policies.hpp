// SPDX-License-Identifier: Apache-2.0
#pragma once

// Helpers shared by the tests of the token-choice policy families (null experts, prototypical,
// similarity-aware, DynMoLE, BlockFFN) and their losses.

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include <moe/core/context.hpp>
#include <moe/core/error.hpp>
#include <moe/plan.hpp>
#include <moe/core/views.hpp>
#include <moe/core/workspace.hpp>

namespace moe_test {

using moe::index;

/// Golden tolerance of docs/routing-spec.md errata 2: |got - want| <= 1.5e-6 + 2e-5 |want|.
inline bool golden(double got, double want) { return std::abs(got - want) <= 1.5e-6 + 2e-5 * std::abs(want); }

/// Routes x with a fresh plan and workspace.
template <class Router>
moe::routing_plan route(const Router& r, const moe::row_matrix<float>& x, const moe::route_context& ctx = {}) {
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  r.route(moe::view(x), ctx, plan, ws);
  return plan;
}

/// Routes precomputed logits z with a fresh plan and workspace.
template <class Router>
moe::routing_plan route_logits(const Router& r, const moe::row_matrix<float>& z) {
  moe::routing_plan plan;
  moe::workspace ws;
  ws.reset();
  r.route_logits(moe::view(z), plan, ws);
  return plan;
}

/// Checks the experts and weights of the first slots of token t (golden tolerance).
inline void check_slots(const moe::routing_plan& plan, index t, const std::vector<int>& experts,
                        const std::vector<double>& weights) {
  INFO("token " << t);
  for (std::size_t s = 0; s < experts.size(); ++s) {
    INFO("slot " << s);
    CHECK(plan.expert(t, static_cast<index>(s)) == experts[s]);
    if (s < weights.size()) CHECK(golden(plan.weight(t, static_cast<index>(s)), weights[s]));
  }
}

/// Runs f, expects moe::error whose message names `parameter 'param'`.
template <class F>
void throws_naming(F&& f, const std::string& param) {
  try {
    std::forward<F>(f)();
    FAIL("expected moe::error naming parameter '" << param << "'");
  } catch (const moe::error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("parameter '" + param + "'") != std::string::npos);
  }
}

/// Row-major double matrix from nested initializer rows.
inline moe::row_matrix<double> dmatrix(std::initializer_list<std::initializer_list<double>> rows) {
  moe::row_matrix<double> m(static_cast<index>(rows.size()), static_cast<index>(rows.begin()->size()));
  index i = 0;
  for (const auto& r : rows) {
    index j = 0;
    for (double v : r) m(i, j++) = v;
    ++i;
  }
  return m;
}

/// Row-major float matrix from nested initializer rows.
inline moe::row_matrix<float> fmatrix(std::initializer_list<std::initializer_list<double>> rows) {
  return dmatrix(rows).cast<float>();
}

/// Identity router weight `[n × n]` (with x = z the logits are the token states).
inline moe::row_matrix<float> eye(index n) { return moe::row_matrix<float>::Identity(n, n); }

/// The active (expert, weight) pairs of token t, in slot order.
inline std::vector<std::pair<int, double>> active(const moe::routing_plan& plan, index t) {
  std::vector<std::pair<int, double>> out;
  for (index s = 0; s < plan.max_slots(); ++s) {
    if (plan.expert(t, s) != moe::no_expert) out.emplace_back(plan.expert(t, s), plan.weight(t, s));
  }
  return out;
}

}  // namespace moe_test
