// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <type_traits>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
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
/// @tparam Device  where the experts run: moe::device::cpu (default), moe::device::serial, or
///                 moe::device::mpi<Inner> (a share of the experts per process, device/mpi.hpp).
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
  static_assert(execution_device<Device>,
                "moe::layer<Router, Experts, Device>: Device must model moe::execution_device: give it "
                "'using device_type', 'using memory_space', 'using workspace_type' and name()");
  static_assert(device_for<Device, Experts>,
                "moe::layer<Router, Experts, Device>: Device must model moe::device_for<Device, "
                "Experts>: num_experts(bank), workspace_bytes(pass), run(pass, y, ws), add(a, b, out), "
                "accumulate(a, mask, out) for this bank (moe::device::cpu and moe::device::serial run "
                "every moe::detail::host_ffn_bank)");
  static_assert(accessible_from<Device, host_memory>,
                "moe::layer<Router, Experts, Device>: the layer's token views are host Eigen matrices "
                "(host_memory), which Device cannot read; give the layer views in the device's "
                "memory space, or run it on moe::device::cpu");

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
  ///
  /// The layer is a driver: route (through moe::route_on, so a device may route itself) →
  /// prepare (device-neutral plan processing: skipped tokens lose their slots, the expert-major
  /// view is built) → run on the device (routed and shared experts, output scale). Repeated
  /// passes repeat the three steps on `h = x + y`, the rows added by the device.
  ///
  /// Non-finite token states: by default a NaN or ±inf in x throws moe::error naming the first
  /// (token, feature); `set_nonfinite(nonfinite_policy::propagate)` skips the check (its cost is
  /// one pass over x, measured in bench/layer_bench.cpp), and non-finite values then flow through
  /// the experts as IEEE arithmetic makes them (an inf in x typically gives NaN in y).
  void forward(const_matrix_map<float> x, matrix_map<float> y, const route_context& ctx = {}) {
    constexpr const char* where = "moe::layer::forward";
    agreed(where, [&] {
      detail::check_extent(where, "x.cols()", x.cols(), hidden());
      detail::check_extent(where, "y.rows()", y.rows(), x.rows());
      detail::check_extent(where, "y.cols()", y.cols(), hidden());
      if (detail::views_overlap(x, y)) {
        detail::throw_error(error_id::shape, "moe::layer::forward: parameter 'y' must not overlap "
                                             "'x' (in-place forward is not supported)");
      }
      if (m_nonfinite == nonfinite_policy::error) detail::check_finite_rows(where, "x", x);
    });
    m_route_ws.reset();
    route_on(m_device, m_router, x, with_threads(ctx), m_plan, m_route_ws);
    int max_passes = prepare(m_plan, nullptr);
    // A device over several processes runs the passes together: the most any process needs.
    if constexpr (requires { m_device.max_over_processes(max_passes); }) max_passes = m_device.max_over_processes(max_passes);
    run_pass(m_plan, x, nullptr, y);
    if (max_passes > 1) repeat_passes(x, y, ctx, max_passes);
    // A pass that grew a workspace consolidates it now, not in the next forward.
    m_route_ws.reset();
    if constexpr (requires { m_ws.reset(); }) m_ws.reset();
  }

  /// Eigen convenience: any row-major matrix, Map or Block, const or not.
  template <class X, class Y>
    requires(!(std::is_same_v<X, const_matrix_map<float>> && std::is_same_v<std::remove_cvref_t<Y>, matrix_map<float>>))
  void forward(const Eigen::DenseBase<X>& x, Y&& y, const route_context& ctx = {}) {
    static_assert(accessible_from<Device, memory_space_of_t<X>>,
                  "moe::layer::forward: x is in a memory space the device cannot read");
    forward(const_matrix_map<float>(view(x)), matrix_map<float>(view(std::forward<Y>(y))), ctx);
  }

  /// Routes `x` without running the experts; returns the plan (valid until the next call).
  /// Skipped tokens have their slots cleared; repeated passes are not routed (they need the
  /// experts' output).
  const routing_plan& route(const_matrix_map<float> x, const route_context& ctx = {}) {
    agreed("moe::layer::route", [&] {
      detail::check_extent("moe::layer::route", "x.cols()", x.cols(), hidden());
      if (m_nonfinite == nonfinite_policy::error) detail::check_finite_rows("moe::layer::route", "x", x);
    });
    m_route_ws.reset();
    route_on(m_device, m_router, x, with_threads(ctx), m_plan, m_route_ws);
    prepare(m_plan, nullptr);
    m_route_ws.reset();
    return m_plan;
  }
  /// Eigen convenience: any row-major matrix, Map or Block, const or not.
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

  /// What forward() does with NaN or ±inf in x (default: nonfinite_policy::error).
  void set_nonfinite(nonfinite_policy p) noexcept { m_nonfinite = p; }
  [[nodiscard]] nonfinite_policy nonfinite() const noexcept { return m_nonfinite; }

  [[nodiscard]] index hidden() const noexcept { return m_experts.hidden(); }
  /// Logical experts the layer routes to (the device's: all of the bank's on one process).
  [[nodiscard]] index num_experts() const { return m_device.num_experts(m_experts); }
  [[nodiscard]] const Router& router() const noexcept { return m_router; }
  [[nodiscard]] Router& router() noexcept { return m_router; }
  [[nodiscard]] const Experts& experts() const noexcept { return m_experts; }
  [[nodiscard]] const Device& device() const noexcept { return m_device; }
  [[nodiscard]] Device& device() noexcept { return m_device; }
  [[nodiscard]] bool has_shared_experts() const noexcept { return m_shared.has_value(); }

 private:
  // The router runs with the device's threads unless the caller set a number.
  route_context with_threads(route_context ctx) const noexcept {
    if constexpr (requires(const Device& d) { d.concurrency(); }) {
      if (ctx.threads == 0) ctx.threads = m_device.concurrency();
    }
    return ctx;
  }

  // Runs local checks; a device whose processes must fail together (moe::device::mpi) makes
  // every process throw when any of them does.
  template <class Checks>
  void agreed(const char* where, Checks&& checks) const {
    if constexpr (requires(std::exception_ptr p) { m_device.agree(p, where); }) {
      std::exception_ptr bad;
      try {
        checks();
      } catch (...) {
        bad = std::current_exception();
      }
      m_device.agree(bad, where);
    } else {
      checks();
    }
  }

  void check_parts() const {
    constexpr const char* where = "moe::layer";
    if constexpr (requires { m_device.check_layer(m_router, m_experts); }) m_device.check_layer(m_router, m_experts);
    detail::check_extent(where, "router.num_experts()", m_router.num_experts(), num_experts());
    detail::check_extent(where, "router.hidden()", m_router.hidden(), m_experts.hidden());
    if (m_shared) detail::check_extent(where, "shared.hidden()", m_shared->hidden(), m_experts.hidden());
  }

  // Device-neutral plan processing: clears the slots of the tokens that do not run (passes 0, or
  // mask[t] == 0 when a mask is given) and builds the expert-major view. Returns the largest pass
  // count (0 if T = 0).
  static int prepare(routing_plan& plan, const std::uint8_t* mask) {
    int max_passes = 0;
    for (index t = 0; t < plan.num_tokens(); ++t) {
      const int p = plan.passes(t);
      max_passes = std::max(max_passes, p);
      if (mask ? mask[t] != 0 : p != 0) continue;
      for (index s = 0; s < plan.max_slots(); ++s) {
        if (plan.expert(t, s) != no_expert) plan.set(t, s, no_expert, 0.0f);
      }
    }
    plan.build_expert_major();
    return max_passes;
  }

  void run_pass(const routing_plan& plan, const_matrix_map<float> x, const std::uint8_t* mask, matrix_map<float> y) {
    const layer_pass<Experts> pass{&plan, x, &m_experts, m_shared ? &*m_shared : nullptr, mask};
    m_ws.reset();
    m_ws.reserve(m_device.workspace_bytes(pass));
    m_device.run(pass, y, m_ws);
  }

  // Passes 2..max_passes of repeated tokens: h = x + y, route h again, y += one pass on h.
  void repeat_passes(const_matrix_map<float> x, matrix_map<float> y, const route_context& ctx, int max_passes) {
    const index T = x.rows(), d = hidden();
    float* h = m_route_ws.take<float>(static_cast<std::size_t>(T * d));   // [T × d]
    float* yp = m_route_ws.take<float>(static_cast<std::size_t>(T * d));  // [T × d]
    auto* mask = m_route_ws.take<std::uint8_t>(static_cast<std::size_t>(T));
    const auto hv = map(static_cast<const float*>(h), T, d);
    for (int pass = 2; pass <= max_passes; ++pass) {
      m_device.add(x, read_only(y), map(h, T, d));
      route_on(m_device, m_router, hv, with_threads(ctx), m_repeat_plan, m_route_ws, true);
      detail::check_extent("moe::layer::forward", "repeat plan num_tokens()", m_repeat_plan.num_tokens(), T);
      for (index t = 0; t < T; ++t) mask[t] = m_plan.passes(t) >= pass && m_repeat_plan.passes(t) != 0;
      prepare(m_repeat_plan, mask);
      auto yv = map(yp, T, d);
      run_pass(m_repeat_plan, hv, mask, yv);
      m_device.accumulate(read_only(yv), mask, y);
    }
  }

  static const_matrix_map<float> read_only(matrix_map<float> m) noexcept {
    return map(static_cast<const float*>(m.data()), m.rows(), m.cols(), m.outerStride());
  }

  Router m_router;
  Experts m_experts;
  std::optional<shared_experts<Experts>> m_shared;
  Device m_device;
  workspace m_route_ws;                          // host scratch of routing and plan processing
  typename Device::workspace_type m_ws;          // the device's scratch, sized by its query
  routing_plan m_plan;
  routing_plan m_repeat_plan;  // re-routing of the second and later passes of repeated tokens
  nonfinite_policy m_nonfinite = nonfinite_policy::error;
};

}  // namespace moe
