// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The host schedule shared by moe::device::serial and moe::device::cpu.
//
// Dispatch, for a bank of two-stage experts and a list of assignments grouped by expert
// (`offsets[E+1]`, per assignment: input row, output row, weight):
//   0. every thread zeroes its share of the output rows (when the call overwrites y);
//   1. stage 1, for each expert in order: every thread packs the expert's input rows and computes
//      its own range of up-panels (intermediate columns) into `act`;
//   -- barrier --
//   2. stage 2, for each expert in order: every thread packs the expert's `act` rows and adds
//      `weight · out` into its own range of down-panels (output columns) of y.
// Both threads work on every expert (decode streams each expert's weights once), and each output
// element receives its contributions in expert order from a single thread, so the result is the
// same, bit for bit, for any number of threads and any batch composition.

#include <algorithm>
#include <cstring>
#include <functional>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/experts/shared.hpp"
#include "moe/kernels/gemm.hpp"

namespace moe::detail {

/// The packed-kernel interface that host devices drive (moe::device::serial, moe::device::cpu and
/// the devices built on them): an expert bank whose experts are two-stage FFNs over panels.
///
/// Stage 1 (`up`) maps input rows (`x[i]`, hidden() floats each) to the activated intermediate
/// `act [rows × intermediate()]` for a range of up-panels; stage 2 (`down`) maps intermediate rows
/// to `y[i] = fma(weight[i], out_i, y[i])` for a range of down-panels. Panels are disjoint column
/// ranges, so threads can split them. Each call packs its rows into `scratch`
/// (scratch_bytes(rows) bytes). This is a host device's business, not part of moe::expert_bank.
template <class B>
concept host_ffn_bank = expert_bank<B> &&
    requires(const B& b, index e, const float* const* rows, index n, index p0, index p1, float* act, index ld,
             const float* w, float* const* y, void* scratch) {
  { b.intermediate() } -> std::convertible_to<index>;
  { b.up_panels() } -> std::convertible_to<index>;
  { b.down_panels() } -> std::convertible_to<index>;
  { b.scratch_bytes(n) } -> std::convertible_to<std::size_t>;
  b.up(e, rows, n, p0, p1, act, ld, scratch);
  b.down(e, rows, n, p0, p1, w, y, scratch);
};

/// Assignments grouped by expert, as the schedule consumes them.
struct ffn_work {
  const index* offsets = nullptr;   ///< [E + 1]
  const float* const* x_rows = nullptr;  ///< [A] input row of each assignment
  float* const* y_rows = nullptr;        ///< [A] output row of each assignment
  const float* weights = nullptr;        ///< [A] combine weight
  index experts = 0;
};

/// Scratch of one dispatch, carved from the workspace by the calling thread.
struct ffn_scratch {
  float* act = nullptr;  ///< [A × ld_act]
  index ld_act = 0;
  std::byte* packed = nullptr;  ///< [threads × packed_bytes]
  std::size_t packed_bytes = 0;
  const float** act_rows = nullptr;  ///< [threads × chunk]
  index chunk = 0;
};

template <host_ffn_bank Bank>
ffn_scratch make_ffn_scratch(const Bank& bank, index assignments, int threads, workspace& ws) {
  ffn_scratch s;
  s.ld_act = (bank.intermediate() + 15) / 16 * 16;
  s.act = ws.take<float>(static_cast<std::size_t>(std::max<index>(assignments, 1) * s.ld_act));
  // No expert computes more rows than there are assignments: small batches take small scratch.
  s.chunk = std::min(std::max<index>(assignments, 1), kernels::rows_per_chunk(std::min(bank.hidden(), bank.intermediate())));
  s.packed_bytes = (bank.scratch_bytes(s.chunk) + buffer_alignment - 1) / buffer_alignment * buffer_alignment;
  s.packed = ws.take<std::byte>(s.packed_bytes * static_cast<std::size_t>(threads));
  s.act_rows = ws.take<const float*>(static_cast<std::size_t>(s.chunk * threads));
  return s;
}

/// Work lists of a routed dispatch: the plan's expert-major view. For an input-weighted plan
/// (routing_plan::input_weighted(), Llama 4) each assignment's input row is `w · x_t` (d floats
/// each, in the workspace: `d` must be given) and its combine weight 1.
inline ffn_work make_plan_work(const routing_plan& plan, const float* x, index ld_x, float* y,
                               index ld_y, workspace& ws, index d = 0) {
  const auto entries = plan.entries();
  const auto a = static_cast<std::size_t>(entries.size());
  auto** xr = ws.take<const float*>(std::max<std::size_t>(a, 1));
  auto** yr = ws.take<float*>(std::max<std::size_t>(a, 1));
  auto* w = ws.take<float>(std::max<std::size_t>(a, 1));
  const bool on_input = plan.input_weighted();
  MOE_EXPECTS(!on_input || d > 0);
  float* scaled = on_input ? ws.take<float>(std::max<std::size_t>(a * static_cast<std::size_t>(d), 1)) : nullptr;
  for (std::size_t i = 0; i < a; ++i) {
    const index t = entries[i].token;
    xr[i] = x + t * ld_x;
    yr[i] = y + t * ld_y;
    w[i] = entries[i].weight;
    if (on_input) {
      float* row = scaled + i * static_cast<std::size_t>(d);
      for (index c = 0; c < d; ++c) row[c] = w[i] * xr[i][c];
      xr[i] = row;
      w[i] = 1.0f;
    }
  }
  return {plan.offsets().data(), xr, yr, w, plan.num_experts()};
}

/// Work lists of a dense pass: every expert of the bank on every token, with weight `gates[t]`
/// (1 when gates is null).
inline ffn_work make_dense_work(index experts, index tokens, const float* x, index ld_x, float* y,
                                index ld_y, const float* gates, workspace& ws) {
  const auto a = static_cast<std::size_t>(std::max<index>(experts * tokens, 1));
  auto* off = ws.take<index>(static_cast<std::size_t>(experts + 1));
  auto** xr = ws.take<const float*>(a);
  auto** yr = ws.take<float*>(a);
  auto* w = ws.take<float>(a);
  for (index e = 0; e <= experts; ++e) off[e] = e * tokens;
  for (index e = 0; e < experts; ++e) {
    for (index t = 0; t < tokens; ++t) {
      xr[e * tokens + t] = x + t * ld_x;
      yr[e * tokens + t] = y + t * ld_y;
      w[e * tokens + t] = gates ? gates[t] : 1.0f;
    }
  }
  return {off, xr, yr, w, experts};
}

/// True when the memory of two row-major views (Maps with outer strides) overlaps.
template <class MapA, class MapB>
bool views_overlap(const MapA& a, const MapB& b) noexcept {
  if (a.rows() == 0 || b.rows() == 0 || a.cols() == 0 || b.cols() == 0) return false;
  const float* ab = a.data();
  const float* ae = ab + (a.rows() - 1) * a.outerStride() + a.cols();
  const float* bb = b.data();
  const float* be = bb + (b.rows() - 1) * b.outerStride() + b.cols();
  return std::less<const float*>{}(ab, be) && std::less<const float*>{}(bb, ae);
}

/// Checks x [T × d] and y [T × d] of a pass over a bank: extents, y's rows distinct, no overlap.
template <class Bank>
void check_operands(const char* where, const_matrix_map<float> x, const Bank& bank, matrix_map<float> y) {
  check_extent(where, "x.cols()", x.cols(), bank.hidden());
  check_extent(where, "y.rows()", y.rows(), x.rows());
  check_extent(where, "y.cols()", y.cols(), bank.hidden());
  if (y.rows() > 1 && y.outerStride() < y.cols()) {
    fail_parameter(error_id::shape, where, "y.outerStride()", concat(">= y.cols() = ", y.cols()), y.outerStride());
  }
  if (views_overlap(x, y)) {
    throw_error(error_id::shape, concat(where, ": parameter 'y' must not overlap 'x' (in-place is not supported)"));
  }
}

/// Checks the operands of a dispatch; `where` names the device.
template <class Bank>
void check_dispatch(const char* where, const routing_plan& plan, const_matrix_map<float> x,
                    const Bank& bank, matrix_map<float> y) {
  if (!plan.has_expert_major()) {
    throw_error(error_id::plan, concat(where, ": parameter 'plan' must have its expert-major view "
                                              "built (routing_plan::build_expert_major())"));
  }
  check_extent(where, "plan.num_experts()", plan.num_experts(), bank.num_experts());
  check_extent(where, "x.rows()", x.rows(), plan.num_tokens());
  check_operands(where, x, bank, y);
}

/// Runs the schedule on thread `tid` of `threads`; `barrier` synchronises the team.
template <host_ffn_bank Bank, class Barrier>
void run_ffn(const Bank& bank, const ffn_work& work, const ffn_scratch& s, float* y, index y_rows,
             index ld_y, bool zero_y, int tid, int threads, Barrier&& barrier) noexcept {
  const index d = bank.hidden();
  const index f = bank.intermediate();
  const index up_p = bank.up_panels();
  const index dn_p = bank.down_panels();
  const index u0 = up_p * tid / threads, u1 = up_p * (tid + 1) / threads;
  const index d0 = dn_p * tid / threads, d1 = dn_p * (tid + 1) / threads;
  void* packed = s.packed + s.packed_bytes * static_cast<std::size_t>(tid);
  const float** act_rows = s.act_rows + s.chunk * tid;

  if (zero_y) {
    const index r0 = y_rows * tid / threads, r1 = y_rows * (tid + 1) / threads;
    for (index r = r0; r < r1; ++r) std::memset(y + r * ld_y, 0, static_cast<std::size_t>(d) * sizeof(float));
  }
  const index chunk_up = std::min(s.chunk, kernels::rows_per_chunk(d));
  if (u0 < u1) {
    for (index e = 0; e < work.experts; ++e) {
      const index begin = work.offsets[e], n = work.offsets[e + 1] - begin;
      for (index c = 0; c < n; c += chunk_up) {
        const index m = std::min(chunk_up, n - c);
        bank.up(e, work.x_rows + begin + c, m, u0, u1, s.act + (begin + c) * s.ld_act, s.ld_act, packed);
      }
    }
  }
  kernels::stream_fence();  // banks may write act with non-temporal stores
  barrier();
  const index chunk_dn = std::min(s.chunk, kernels::rows_per_chunk(f));
  if (d0 < d1) {
    for (index e = 0; e < work.experts; ++e) {
      const index begin = work.offsets[e], n = work.offsets[e + 1] - begin;
      for (index c = 0; c < n; c += chunk_dn) {
        const index m = std::min(chunk_dn, n - c);
        for (index i = 0; i < m; ++i) act_rows[i] = s.act + (begin + c + i) * s.ld_act;
        bank.down(e, act_rows, m, d0, d1, work.weights + begin + c, work.y_rows + begin + c, packed);
      }
    }
  }
}

/// Bytes that make_ffn_scratch() and make_*_work() take for `assignments` rows on `threads`
/// threads, rounded as the workspace rounds (the workspace query of host devices).
template <host_ffn_bank Bank>
std::size_t ffn_workspace_bytes(const Bank& bank, index assignments, index experts, int threads) {
  const auto r = [](std::size_t n) { return round_up(std::max<std::size_t>(n, 1), buffer_alignment); };
  const auto a = static_cast<std::size_t>(std::max<index>(assignments, 1));
  const auto ld_act = static_cast<std::size_t>((bank.intermediate() + 15) / 16 * 16);
  const index chunk = std::min(std::max<index>(assignments, 1),
                               kernels::rows_per_chunk(std::min(bank.hidden(), bank.intermediate())));
  const std::size_t packed = round_up(bank.scratch_bytes(chunk), buffer_alignment);
  const auto nt = static_cast<std::size_t>(threads);
  return r(sizeof(index) * static_cast<std::size_t>(experts + 1)) + 2 * r(sizeof(void*) * a) + r(sizeof(float) * a) +
         r(sizeof(float) * a * ld_act) + r(packed * nt) + r(sizeof(void*) * static_cast<std::size_t>(chunk) * nt);
}

/// `y_t += identity_weight(t) · x_t` for the tokens of a pass that run (a plan without identity
/// experts: nothing), one fma per element.
template <class Bank>
void host_add_identity(const layer_pass<Bank>& pass, matrix_map<float> y) noexcept {
  const routing_plan& plan = *pass.plan;
  if (!plan.has_identity()) return;
  const const_matrix_map<float>& x = pass.x;
  for (index t = 0; t < y.rows(); ++t) {
    const float w = plan.identity_weight(t);
    if (w == 0.0f || !pass.runs(t)) continue;
    const float* xt = x.data() + t * x.outerStride();
    float* yt = y.data() + t * y.outerStride();
    for (index c = 0; c < y.cols(); ++c) yt[c] = std::fma(w, xt[c], yt[c]);
  }
}

/// `y_t *= output_scale(t)` for the tokens of a pass that run (a plan without scales: nothing).
template <class Bank>
void host_scale_rows(const layer_pass<Bank>& pass, matrix_map<float> y) noexcept {
  const routing_plan& plan = *pass.plan;
  if (!plan.has_output_scale()) return;
  for (index t = 0; t < y.rows(); ++t) {
    const float s = plan.output_scale(t);
    if (s == 1.0f || !pass.runs(t)) continue;
    y.row(t) *= s;
  }
}

/// Shared experts, identity experts and output scale of a layer pass on a host device, after the
/// routed dispatch wrote y: `y_t += shared(x_t)` for the tokens that run (one dense pass when every
/// token runs; otherwise their rows are gathered, computed and scattered back: the shared bank is
/// batch invariant, so each row gets the same bits), `y_t += identity_weight(t) · x_t`, then
/// `y_t *= output_scale(t)`.
template <class Device, host_ffn_bank Bank>
void host_shared_and_scale(const Device& dev, const layer_pass<Bank>& pass, matrix_map<float> y, workspace& ws) {
  const_matrix_map<float> x = pass.x;
  if (pass.shared) {
    const auto& shared = *pass.shared;
    const index T = x.rows(), d = x.cols();
    index n = 0;
    for (index t = 0; t < T; ++t) n += pass.runs(t);
    if (n == T && T > 0) {
      float* g = nullptr;
      if (shared.gated()) {
        g = ws.take<float>(static_cast<std::size_t>(T));
        shared.gates(x, g, ws);
      }
      dev.accumulate_dense(x, shared.bank(), g, y, ws);
    } else if (n > 0) {
      float* xc = ws.take<float>(static_cast<std::size_t>(n * d));  // [n × d]
      float* yc = ws.take<float>(static_cast<std::size_t>(n * d));  // [n × d]
      for (index t = 0, i = 0; t < T; ++t) {
        if (!pass.runs(t)) continue;
        std::copy_n(x.data() + t * x.outerStride(), d, xc + i * d);
        std::copy_n(y.data() + t * y.outerStride(), d, yc + i * d);
        ++i;
      }
      const auto xv = map(static_cast<const float*>(xc), n, d);
      float* g = nullptr;
      if (shared.gated()) {
        g = ws.take<float>(static_cast<std::size_t>(n));
        shared.gates(xv, g, ws);
      }
      dev.accumulate_dense(xv, shared.bank(), g, map(yc, n, d), ws);
      for (index t = 0, i = 0; t < T; ++t) {
        if (!pass.runs(t)) continue;
        std::copy_n(yc + i * d, d, y.data() + t * y.outerStride());
        ++i;
      }
    }
  }
  host_add_identity(pass, y);
  host_scale_rows(pass, y);
}

/// The operations of moe::device_for on host memory, shared by the host devices (CRTP: Derived
/// provides dispatch() and accumulate_dense()).
template <class Derived>
struct host_device_ops {
  using memory_space = host_memory;
  using workspace_type = workspace;

  /// Every expert of the bank is local.
  template <expert_bank Bank>
  [[nodiscard]] static index num_experts(const Bank& bank) noexcept {
    return bank.num_experts();
  }

  /// Bytes of workspace that run() takes for the routed experts of a pass (shared experts and
  /// gathers add theirs on first use).
  template <host_ffn_bank Bank>
  [[nodiscard]] std::size_t workspace_bytes(const layer_pass<Bank>& pass) const {
    const index a = pass.plan->num_tokens() * pass.plan->max_slots();
    const std::size_t scaled = pass.plan->input_weighted()
                                   ? round_up(sizeof(float) * static_cast<std::size_t>(std::max<index>(a * pass.experts->hidden(), 1)), buffer_alignment)
                                   : 0;
    return ffn_workspace_bytes(*pass.experts, a, pass.plan->num_experts(), self().concurrency()) + scaled;
  }

  /// `y = s · (routed + shared)` for the tokens of the pass that run; y is overwritten.
  template <host_ffn_bank Bank>
  void run(const layer_pass<Bank>& pass, matrix_map<float> y, workspace& ws) const {
    self().dispatch(*pass.plan, pass.x, *pass.experts, y, ws);
    host_shared_and_scale(self(), pass, y, ws);
  }

  /// `out = a + b`, row by row.
  static void add(const_matrix_map<float> a, const_matrix_map<float> b, matrix_map<float> out) {
    constexpr const char* where = "moe::device::add";
    check_extent(where, "b.rows()", b.rows(), a.rows());
    check_extent(where, "b.cols()", b.cols(), a.cols());
    check_extent(where, "out.rows()", out.rows(), a.rows());
    check_extent(where, "out.cols()", out.cols(), a.cols());
    for (index t = 0; t < a.rows(); ++t) {
      for (index i = 0; i < a.cols(); ++i) out(t, i) = a(t, i) + b(t, i);
    }
  }

  /// `out_t += a_t` for the rows with `mask[t] != 0`.
  static void accumulate(const_matrix_map<float> a, const std::uint8_t* mask, matrix_map<float> out) {
    constexpr const char* where = "moe::device::accumulate";
    check_extent(where, "out.rows()", out.rows(), a.rows());
    check_extent(where, "out.cols()", out.cols(), a.cols());
    for (index t = 0; t < a.rows(); ++t) {
      if (mask[t]) out.row(t) += a.row(t);
    }
  }

 private:
  const Derived& self() const noexcept { return static_cast<const Derived&>(*this); }
};

}  // namespace moe::detail
