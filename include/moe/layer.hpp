// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

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
    if (x.rows() > 0 && overlap(x, y)) {
      detail::throw_error(error_id::shape, "moe::layer::forward: parameter 'y' must not overlap "
                                           "'x' (in-place forward is not supported)");
    }
    m_ws.reset();
    m_router.route(x, with_threads(ctx), m_plan, m_ws);
    m_plan.build_expert_major();
    m_device.dispatch(m_plan, x, m_experts, y, m_ws);
    if (m_shared) {
      float* g = nullptr;
      if (m_shared->gated()) {
        g = m_ws.take<float>(static_cast<std::size_t>(std::max<index>(x.rows(), 1)));
        m_shared->gates(x, g, m_ws);
      }
      m_device.accumulate_dense(x, m_shared->bank(), g, y, m_ws);
    }
  }

  /// Eigen convenience: any row-major matrix, Map or Block.
  template <class X, class Y>
  void forward(const Eigen::DenseBase<X>& x, Y&& y, const route_context& ctx = {}) {
    forward(view(x), view(std::forward<Y>(y)), ctx);
  }

  /// Routes `x` without running the experts; returns the plan (valid until the next call).
  const routing_plan& route(const_matrix_map<float> x, const route_context& ctx = {}) {
    detail::check_extent("moe::layer::route", "x.cols()", x.cols(), hidden());
    m_ws.reset();
    m_router.route(x, with_threads(ctx), m_plan, m_ws);
    m_plan.build_expert_major();
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

  static bool overlap(const const_matrix_map<float>& x, const matrix_map<float>& y) noexcept {
    const float* xb = x.data();
    const float* xe = xb + (x.rows() - 1) * x.outerStride() + x.cols();
    const float* yb = y.data();
    const float* ye = yb + (y.rows() - 1) * y.outerStride() + y.cols();
    return std::less<const float*>{}(xb, ye) && std::less<const float*>{}(yb, xe);
  }

  Router m_router;
  Experts m_experts;
  std::optional<shared_experts<Experts>> m_shared;
  Device m_device;
  workspace m_ws;
  routing_plan m_plan;
};

}  // namespace moe
