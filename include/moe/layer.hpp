// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/plan.hpp"
#include "moe/core/stats.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/cpu.hpp"
#include "moe/device/schedule.hpp"
#include "moe/experts/shared.hpp"

namespace moe {

/// A Mixture-of-Experts layer: a router policy, an expert bank, optional shared experts, a
/// device and a workspace.
///
/// @tparam Router  a moe::router (moe::top_k<>, or a policy of your own).
/// @tparam Experts a moe::expert_bank (moe::swiglu_experts<float>).
/// @tparam Device  where the experts run: moe::device::cpu (default) or moe::device::serial.
///
/// `forward(x, y)` computes `y = Σ_slots weight · Expert(x) (+ shared experts)`; the residual
/// connection stays outside (`h += y`). After the first call with a given batch size a forward
/// allocates nothing. A layer is not thread-safe (it owns its workspace and last plan); use one
/// layer object per concurrent caller.
///
/// Depth decisions of the plan (layer-skip policies, docs/routing-spec.md §13; moe::layer_skip) are
/// honoured per token, with `M(x)` the routed + shared output of one pass:
///   - `passes(t) = 0` (skip): the token computes nothing, `y_t = 0` (the layer is the identity
///     once the caller adds the residual); its slots are cleared and no shared expert runs;
///   - `passes(t) = 1`: `y_t = s_t · M(x_t)`, `s_t = output_scale(t)` (1 unless the policy sets
///     it; the MoD router weight scales routed AND shared experts);
///   - `passes(t) = n >= 2` (repeat): the block `h <- h + y` runs n times, so the layer returns
///     the sum of the passes' outputs, `y_t = M(x_t) + M(x_t + M(x_t))` for n = 2. Each pass after
///     the first routes again, on `h = x + y`, with the router's `route_repeat()` when it has one
///     (moe::layer_skip routes with its inner router alone) and with `route()` otherwise; in that
///     re-routing plan passes 0 skips the pass, any other count means one pass, and its output
///     scale applies.
/// A plan without skips, scales or repeats takes the plain path (bitwise unchanged).
template <class Router, class Experts, class Device = device::cpu>
class layer {
  static_assert(router<Router>,
                "moe::layer<Router, Experts, Device>: Router must model moe::router: give it "
                "'using router_type = ...', num_experts(), hidden(), max_slots() and a const "
                "route(x, ctx, plan, workspace)");
  static_assert(expert_bank<Experts>,
                "moe::layer<Router, Experts, Device>: Experts must model moe::expert_bank "
                "(e.g. moe::swiglu_experts<float>)");
  static_assert(device_for<Device, Experts>,
                "moe::layer<Router, Experts, Device>: Device must model moe::device_for<Device, "
                "Experts> (moe::device::cpu or moe::device::serial)");

 public:
  using router_type = Router;
  using experts_type = Experts;
  using device_type = Device;

  layer(Router router, Experts experts, Device device = {})
      : m_router(std::move(router)), m_experts(std::move(experts)), m_device(std::move(device)) {
    check_parts();
  }

  /// With shared experts that every token goes through.
  layer(Router router, Experts experts, shared_experts<Experts> shared, Device device = {})
      : m_router(std::move(router)),
        m_experts(std::move(experts)),
        m_shared(std::move(shared)),
        m_device(std::move(device)) {
    check_parts();
  }

  /// `y [T × d] = MoE(x [T × d])`; y is overwritten and must not overlap x.
  void forward(const_matrix_map<float> x, matrix_map<float> y, const route_context& ctx = {}) {
    constexpr const char* where = "moe::layer::forward";
    detail::check_extent(where, "x.cols()", x.cols(), hidden());
    detail::check_extent(where, "y.rows()", y.rows(), x.rows());
    detail::check_extent(where, "y.cols()", y.cols(), hidden());
    if (detail::views_overlap(x, y)) {
      detail::throw_error(error_id::shape, "moe::layer::forward: parameter 'y' must not overlap "
                                           "'x' (in-place forward is not supported)");
    }
    m_ws.reset();
    m_router.route(x, with_threads(ctx), m_plan, m_ws);
    const int max_passes = clear_skipped(m_plan);
    m_plan.build_expert_major();
    m_device.dispatch(m_plan, x, m_experts, y, m_ws);
    add_shared(x, y, m_plan, nullptr);
    if (m_plan.has_output_scale()) scale_rows(y, m_plan, nullptr);
    if (max_passes > 1) repeat_passes(x, y, ctx, max_passes);
    m_ws.reset();  // a pass that grew the workspace consolidates it now, not in the next forward
  }

  /// Eigen convenience: any row-major matrix, Map or Block.
  template <class X, class Y>
  void forward(const Eigen::DenseBase<X>& x, Y&& y, const route_context& ctx = {}) {
    forward(view(x), view(std::forward<Y>(y)), ctx);
  }

  /// Routes `x` without running the experts; returns the plan (valid until the next call).
  /// Skipped tokens have their slots cleared; repeated passes are not routed (they need the
  /// experts' output).
  const routing_plan& route(const_matrix_map<float> x, const route_context& ctx = {}) {
    detail::check_extent("moe::layer::route", "x.cols()", x.cols(), hidden());
    m_ws.reset();
    m_router.route(x, with_threads(ctx), m_plan, m_ws);
    clear_skipped(m_plan);
    m_plan.build_expert_major();
    m_ws.reset();
    return m_plan;
  }
  template <class X>
  const routing_plan& route(const Eigen::DenseBase<X>& x, const route_context& ctx = {}) {
    return route(view(x), ctx);
  }

  /// The plan of the last forward() or route().
  [[nodiscard]] const routing_plan& plan() const noexcept { return m_plan; }
  /// Statistics of the last forward() or route(): load, experts per token, entropy.
  [[nodiscard]] routing_stats stats() const { return compute_stats(m_plan); }

  /// Statistics specific to the router policy (what its paper reports), when the policy
  /// provides `policy_stats(const routing_plan&) const`.
  [[nodiscard]] auto policy_stats() const
    requires requires(const Router& r, const routing_plan& p) { r.policy_stats(p); }
  {
    return m_router.policy_stats(m_plan);
  }

  [[nodiscard]] index hidden() const noexcept { return m_experts.hidden(); }
  [[nodiscard]] index num_experts() const noexcept { return m_experts.num_experts(); }
  [[nodiscard]] const Router& router() const noexcept { return m_router; }
  [[nodiscard]] Router& router() noexcept { return m_router; }
  [[nodiscard]] const Experts& experts() const noexcept { return m_experts; }
  [[nodiscard]] const Device& device() const noexcept { return m_device; }
  [[nodiscard]] bool has_shared_experts() const noexcept { return m_shared.has_value(); }

 private:
  // The router runs with the device's threads unless the caller set a number.
  route_context with_threads(route_context ctx) const noexcept {
    if constexpr (requires(const Device& d) { d.concurrency(); }) {
      if (ctx.threads == 0) ctx.threads = m_device.concurrency();
    }
    return ctx;
  }

  void check_parts() const {
    constexpr const char* where = "moe::layer";
    detail::check_extent(where, "router.num_experts()", m_router.num_experts(), m_experts.num_experts());
    detail::check_extent(where, "router.hidden()", m_router.hidden(), m_experts.hidden());
    if (m_shared) detail::check_extent(where, "shared.hidden()", m_shared->hidden(), m_experts.hidden());
  }

  // Clears the slots of skipped tokens (passes 0); returns the largest pass count (0 if T = 0).
  static int clear_skipped(routing_plan& plan) noexcept {
    int max_passes = 0;
    for (index t = 0; t < plan.num_tokens(); ++t) {
      const int p = plan.passes(t);
      max_passes = std::max(max_passes, p);
      if (p != 0) continue;
      for (index s = 0; s < plan.max_slots(); ++s) {
        if (plan.expert(t, s) != no_expert) plan.set(t, s, no_expert, 0.0f);
      }
    }
    return max_passes;
  }

  // Token t runs in this pass: mask[t] != 0 if a mask is given, else passes(t) != 0.
  static bool runs(const routing_plan& plan, const std::uint8_t* mask, index t) noexcept {
    return mask ? mask[t] != 0 : plan.passes(t) != 0;
  }

  // y += shared experts of x for the tokens that run. When every token runs this is one dense
  // pass; otherwise the running rows of x and y are gathered, the dense pass runs on them and
  // the rows are scattered back (the same bits per row: the shared bank is batch invariant).
  void add_shared(const_matrix_map<float> x, matrix_map<float> y, const routing_plan& plan,
                  const std::uint8_t* mask) {
    if (!m_shared) return;
    const index T = x.rows(), d = hidden();
    index n = 0;
    for (index t = 0; t < T; ++t) n += runs(plan, mask, t);
    if (n == 0) return;
    if (n == T) {
      float* g = nullptr;
      if (m_shared->gated()) {
        g = m_ws.take<float>(static_cast<std::size_t>(T));
        m_shared->gates(x, g, m_ws);
      }
      m_device.accumulate_dense(x, m_shared->bank(), g, y, m_ws);
      return;
    }
    float* xc = m_ws.take<float>(static_cast<std::size_t>(n * d));  // [n × d]
    float* yc = m_ws.take<float>(static_cast<std::size_t>(n * d));  // [n × d]
    for (index t = 0, i = 0; t < T; ++t) {
      if (!runs(plan, mask, t)) continue;
      std::copy_n(x.data() + t * x.outerStride(), d, xc + i * d);
      std::copy_n(y.data() + t * y.outerStride(), d, yc + i * d);
      ++i;
    }
    const auto xv = map(static_cast<const float*>(xc), n, d);
    float* g = nullptr;
    if (m_shared->gated()) {
      g = m_ws.take<float>(static_cast<std::size_t>(n));
      m_shared->gates(xv, g, m_ws);
    }
    m_device.accumulate_dense(xv, m_shared->bank(), g, map(yc, n, d), m_ws);
    for (index t = 0, i = 0; t < T; ++t) {
      if (!runs(plan, mask, t)) continue;
      std::copy_n(yc + i * d, d, y.data() + t * y.outerStride());
      ++i;
    }
  }

  // y_t *= output_scale(t) for the tokens that run.
  static void scale_rows(matrix_map<float> y, const routing_plan& plan, const std::uint8_t* mask) noexcept {
    for (index t = 0; t < y.rows(); ++t) {
      const float s = plan.output_scale(t);
      if (s == 1.0f || !runs(plan, mask, t)) continue;
      y.row(t) *= s;
    }
  }

  // Passes 2..max_passes of repeated tokens: h = x + y, route h again, y += one pass on h.
  void repeat_passes(const_matrix_map<float> x, matrix_map<float> y, const route_context& ctx, int max_passes) {
    const index T = x.rows(), d = hidden();
    float* h = m_ws.take<float>(static_cast<std::size_t>(T * d));   // [T × d]
    float* yp = m_ws.take<float>(static_cast<std::size_t>(T * d));  // [T × d]
    auto* mask = m_ws.take<std::uint8_t>(static_cast<std::size_t>(T));
    const auto hv = map(static_cast<const float*>(h), T, d);
    for (int pass = 2; pass <= max_passes; ++pass) {
      for (index t = 0; t < T; ++t) {
        for (index i = 0; i < d; ++i) h[t * d + i] = x(t, i) + y(t, i);
      }
      const route_context pass_ctx = with_threads(ctx);
      if constexpr (requires { m_router.route_repeat(hv, pass_ctx, m_repeat_plan, m_ws); }) {
        m_router.route_repeat(hv, pass_ctx, m_repeat_plan, m_ws);
      } else {
        m_router.route(hv, pass_ctx, m_repeat_plan, m_ws);
      }
      detail::check_extent("moe::layer::forward", "repeat plan num_tokens()", m_repeat_plan.num_tokens(), T);
      for (index t = 0; t < T; ++t) {
        mask[t] = m_plan.passes(t) >= pass && m_repeat_plan.passes(t) != 0;
        if (mask[t]) continue;
        for (index s = 0; s < m_repeat_plan.max_slots(); ++s) {
          if (m_repeat_plan.expert(t, s) != no_expert) m_repeat_plan.set(t, s, no_expert, 0.0f);
        }
      }
      m_repeat_plan.build_expert_major();
      auto yv = map(yp, T, d);
      m_device.dispatch(m_repeat_plan, hv, m_experts, yv, m_ws);
      add_shared(hv, yv, m_repeat_plan, mask);
      if (m_repeat_plan.has_output_scale()) scale_rows(yv, m_repeat_plan, mask);
      for (index t = 0; t < T; ++t) {
        if (mask[t]) y.row(t) += yv.row(t);
      }
    }
  }

  Router m_router;
  Experts m_experts;
  std::optional<shared_experts<Experts>> m_shared;
  Device m_device;
  workspace m_ws;
  routing_plan m_plan;
  routing_plan m_repeat_plan;  // re-routing of the second and later passes of repeated tokens
};

}  // namespace moe
