// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The stage protocol of token-choice policies, which wrapper policies build on.
//
// A token-choice policy routes each token by five stages over one row of C score columns
// (C = columns(); a column is an expert, or something that computes nothing such as a null
// expert):
//
//   1. logits(x, z, ldz, ws)           z [T × C] (row stride ldz) from the token states x [T × d]:
//                                      a linear map, then scale_logits()
//      scale_logits(z, T, ldz)         optional: what logits() applies after the linear map (a
//                                      temperature); route_logits_by_stages() applies it to the
//                                      caller's raw logits, so that route_logits(W x) = route(x)
//   2. prepare_row(z, C, t)            the NaN policy on one row (throws or maps NaN to -inf);
//      prepare_row(z, C, t, where, p)  optional: the same, an error naming `where` and the
//                                      parameter `p` ('x' for route, 'z' for route_logits)
//   3. gate_row(z, s) -> bool          scores s [C] = gate(z); false for a degenerate row
//      row_entropy(s, scratch)         the entropy the plan records for the token
//   4. select_row(z, s, idx, scratch)  up to max_slots() columns, best first (ties: lower
//                                      column); a -inf entry of z is never selected
//   5. weigh_row(s, idx, n, w)         combine weights of the n selected columns; it may
//                                      overwrite s (the row is scratch after selection)
//
// and maps each selected column to its expert with column_expert(c) (moe::no_expert for a
// column that computes nothing). `scratch` always holds C floats.
//
// Two optional stages let moe::route_by_stages() run stage 1 on the threads as well:
//      logits_weight()                 the packed weight W `[C × d]` when logits() is exactly
//                                      `scale_logits(W x)` (moe::top_k, moe::topk_softmax, ...)
//      input_rows(x, begin, end, out)  the router input of rows [begin, end) of x, when W reads
//                                      something else than x (moe::rms_scaled_router); it must
//                                      not throw
//
// Threads (docs/routing-spec.md §17.0): route_by_stages() splits the rows over
// `route_context::threads` (0: the device's); stages 2-5 run on each thread's share with its
// own scratch, so every stage must be callable concurrently on distinct rows (they are const and
// keep no state). The plan is bitwise the same on any number of threads, and a NaN error names
// the lowest bad token. Routers that are not a chain of these stages (moe::prototypical,
// moe::expert_choice, moe::similarity_aware) run on the threads through the engine's pieces:
// detail::token_choice::logits_stage() (stage 1, on the threads when linear) and
// detail::token_choice::parallel_rows() (rows on the threads, the same lowest-bad-row rule).
//
// A wrapper takes its base as a template parameter and either forwards these stages, changing
// one (moe::null_experts adds columns and changes step 5), or runs them itself with other
// inputs (moe::similarity_aware passes mixed scores to steps 4 and 5). Step 4 is called with the
// logits as its first argument; a wrapper that selects on scores passes its key row there
// (a monotone gate selects on that argument). moe::route_by_stages() runs the five stages for a
// batch, which is all that route() of a per-token policy has to do (moe::topk_softmax,
// moe::sparsemixer, moe::null_experts, moe::rms_scaled_router do only that).

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <span>
#include <string_view>
#include <type_traits>
#include <utility>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/core/parallel.hpp"
#include "moe/plan.hpp"
#include "moe/core/sequences.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/routing/detail/rows.hpp"
#include "moe/routing/routers/top_k.hpp"

namespace moe {

/// A router whose per-token stages (logits, prepare, gate, select, weigh) are public, so that
/// wrapper policies (moe::null_experts, moe::similarity_aware) can reuse them. See the comment
/// at the top of routing/routers/token_choice.hpp.
template <class P>
concept token_choice_policy =
    router<P> && requires(const P& p, const_matrix_map<float> x, float* z, float* s,
                          std::int32_t* idx, const std::int32_t* cidx, index n, workspace& ws) {
      { p.columns() } -> std::convertible_to<index>;
      p.logits(x, z, n, ws);
      p.prepare_row(z, n, n);
      { p.gate_row(z, s) } -> std::convertible_to<bool>;
      { p.row_entropy(s, z) } -> std::convertible_to<float>;
      { p.select_row(z, s, idx, z) } -> std::convertible_to<index>;
      p.weigh_row(s, cidx, n, z);
      { p.column_expert(n) } -> std::convertible_to<std::int32_t>;
    };

static_assert(token_choice_policy<top_k<softmax_gate>>);
static_assert(token_choice_policy<top_k<sigmoid_gate>>);

namespace detail::token_choice {

/// The NaN stage of `policy` on one row: its prepare_row(z, C, t, where, param) when it has one,
/// else prepare_row(z, C, t).
template <class P>
void prepare(const P& policy, float* z, index C, index t, std::string_view where, std::string_view param) {
  if constexpr (requires { policy.prepare_row(z, C, t, where, param); }) {
    policy.prepare_row(z, C, t, where, param);
  } else {
    policy.prepare_row(z, C, t);
  }
}

/// The temperature stage of `policy` (scale_logits) on `rows` rows of C raw logits, if it has one.
template <class P>
void scale(const P& policy, float* z, index rows, index C) {
  if constexpr (requires { policy.scale_logits(z, rows, C); }) policy.scale_logits(z, rows, C);
}

/// A policy whose stage 1 is linear: `logits(x) = scale_logits(W x)` with `W = logits_weight()`
/// (packed `[columns() × d]`), optionally on the rows that input_rows() makes of x. The engine
/// then computes the logits on the threads, with the bits of kernels::gemm.
template <class P>
concept linear_logits = requires(const P& p) {
  { p.logits_weight() } -> std::same_as<const kernels::packed_weights&>;
};

/// A policy whose router input is not the token state itself: `input_rows(x, begin, end, out)`
/// writes the router input of the rows `[begin, end)` of x into `out` (row stride hidden(),
/// noexcept). Only meaningful together with linear_logits.
template <class P>
concept transformed_input = requires(const P& p, const_matrix_map<float> x, index i, float* out) {
  p.input_rows(x, i, i, out);
};

/// Token count up to which stage 1 splits the weight's panels (not the rows) between threads,
/// as moe::top_k does.
inline constexpr index decode_rows = 8;

/// Threads for T rows: `ctx.threads` (0: detail::default_threads()), at most T, at least 1.
inline int threads_for(const route_context& ctx, index T) noexcept {
  const int nt = ctx.threads > 0 ? ctx.threads : detail::default_threads();
  return static_cast<int>(std::max<index>(1, std::min<index>(nt, T)));
}

/// Slot `s` of token `t` is expert `e` with weight `w` (0 for moe::no_expert), as
/// routing_plan::set() writes it but without touching the plan's shared state, so that threads
/// may write distinct tokens at once: call `plan.invalidate()` after the last write.
inline void write_slot(routing_plan& plan, index t, index s, std::int32_t e, float w) noexcept {
  plan.experts(t)[static_cast<std::size_t>(s)] = e;
  plan.weights(t)[static_cast<std::size_t>(s)] = e == no_expert ? 0.0f : w;
}

/// Runs `stage(tid, team, barrier)`, then `row(tid, t)` on every row t of the thread's share of
/// `[0, n)` (detail::share_of), on up to `nt` threads. `row` must not throw: it returns false
/// when row t fails, which stops its thread. After the region each interrupted share, in
/// ascending order, is run again serially from its first failed row by `retry(t)`, which routes
/// row t on the calling thread (thread 0's buffers) and throws the row's error; so the error
/// raised is the one of the lowest failed row, exactly as one thread raises it.
template <class Stage, class Row, class Retry>
void parallel_rows(index n, int nt, workspace& ws, Stage&& stage, Row&& row, Retry&& retry) {
  auto* bad = ws.take<index>(static_cast<std::size_t>(nt));  // first failed row per thread, or -1
  std::fill(bad, bad + nt, index{-1});
  int team_size = 1;
  detail::parallel_region(nt, [&](int tid, int team, auto&& barrier) {
    if (tid == 0) team_size = team;
    stage(tid, team, barrier);
    const auto rows = detail::share_of(n, tid, team);
    for (index t = rows.begin; t < rows.end; ++t) {
      if (!row(tid, t)) {
        bad[tid] = t;
        break;
      }
    }
  });
  for (int i = 0; i < team_size; ++i) {
    if (bad[i] < 0) continue;
    for (index t = bad[i]; t < detail::share_of(n, i, team_size).end; ++t) retry(t);
  }
}

/// Per-thread buffers of the row stages: s and scratch [C], idx and w [max(K, 1)].
struct row_buffers {
  float* s;
  float* scratch;
  std::int32_t* idx;
  float* w;
};

/// Stages 2-5 on row t of the logits (`zt`, modified in place), written into the plan's rows
/// directly (no shared state, so threads may route distinct rows at once). Returns false, having
/// written nothing, if the NaN stage threw (the caller reports it after the parallel region).
template <class P>
bool route_row(const P& policy, float* zt, index t, routing_plan& plan, const row_buffers& b, std::string_view where,
               std::string_view param) noexcept {
  const index C = policy.columns();
  try {
    prepare(policy, zt, C, t, where, param);
  } catch (...) {
    return false;
  }
  float* entropy = plan.entropy_data();
  float* top = plan.top_score_data();
  if (!policy.gate_row(zt, b.s)) {
    entropy[t] = 0.0f;
    top[t] = 0.0f;
    return true;  // degenerate: routes nowhere
  }
  entropy[t] = policy.row_entropy(b.s, b.scratch);
  const index count = policy.select_row(zt, b.s, b.idx, b.scratch);
  top[t] = count > 0 ? b.s[b.idx[0]] : 0.0f;  // before weigh_row may overwrite s
  policy.weigh_row(b.s, b.idx, count, b.w);
  for (index slot = 0; slot < count; ++slot) write_slot(plan, t, slot, policy.column_expert(b.idx[slot]), b.w[slot]);
  return true;
}

/// Runs `logits(tid, team, barrier)`, which fills (at least) the thread's share of the rows of
/// `z [T × C]`, then stages 2-5 on each thread's share of the rows, on `nt` threads
/// (parallel_rows(): a NaN error names the lowest bad token, as on one thread).
template <class P, class Logits>
void route_rows(const P& policy, float* z, index T, int nt, routing_plan& plan, workspace& ws, Logits&& logits,
                std::string_view where, std::string_view param) {
  const index C = policy.columns();
  const index K = std::max<index>(policy.max_slots(), 1);
  const auto n = static_cast<std::size_t>(nt);
  float* s = ws.take<float>(n * static_cast<std::size_t>(C));
  float* scratch = ws.take<float>(n * static_cast<std::size_t>(C));
  auto* idx = ws.take<std::int32_t>(n * static_cast<std::size_t>(K));
  float* w = ws.take<float>(n * static_cast<std::size_t>(K));
  const auto buffers = [&](int tid) {
    return row_buffers{s + tid * C, scratch + tid * C, idx + tid * K, w + tid * K};
  };
  parallel_rows(T, nt, ws, logits, [&](int tid, index t) noexcept {
    return route_row(policy, z + t * C, t, plan, buffers(tid), where, param);
  }, [&](index t) {
    if (!route_row(policy, z + t * C, t, plan, buffers(0), where, param)) {
      prepare(policy, z + t * C, C, t, where, param);  // throws: the lowest bad token
    }
  });
  plan.mark_entropy();
  plan.mark_top_score();
  plan.invalidate();
}

/// Stage 1 of a linear_logits policy on thread `tid` of `team`: its share of the router input
/// (transformed_input), then `W x` for its share of the rows (T > decode_rows) or for its share
/// of W's panels over every row (T <= decode_rows: one pass over the weights, then a barrier),
/// then scale_logits() on its rows. The bits do not depend on the split (kernels::gemm_rows).
template <class P, class Barrier>
void linear_logits_share(const P& policy, const_matrix_map<float> x, float* in, float* z,
                         const kernels::gemm_scratch& scratch, int tid, int team, Barrier&& barrier) noexcept {
  const index T = x.rows(), C = policy.columns(), d = policy.hidden();
  const kernels::packed_weights& W = policy.logits_weight();
  const auto rows = detail::share_of(T, tid, team);
  const float* src = x.data();
  index ldx = x.outerStride();
  if constexpr (transformed_input<P>) {
    policy.input_rows(x, rows.begin, rows.end, in + rows.begin * d);
    src = in;
    ldx = d;
  }
  if (T <= decode_rows && team > 1) {
    if constexpr (transformed_input<P>) barrier();  // every row's input before the panels
    const auto panels = detail::share_of(W.panels, tid, team);
    kernels::gemm_rows(src, T, ldx, W, panels.begin, panels.end, z, C, scratch);
    barrier();
  } else {
    kernels::gemm_rows(src + rows.begin * ldx, rows.end - rows.begin, ldx, W, 0, W.panels, z + rows.begin * C, C,
                       scratch);
  }
  scale(policy, z + rows.begin * C, rows.end - rows.begin, C);
}

/// Stage 1 of `policy` on `x [T × d]` into `z [T × columns()]`, for up to `nt` threads, as a
/// `stage(tid, team, barrier)` of parallel_rows() or route_rows(): for a linear_logits policy
/// each thread computes its share (linear_logits_share(), with its scratch taken here from the
/// workspace); otherwise logits() runs here, once, on the calling thread, and the stage does
/// nothing. The bits of z are those of logits() on any number of threads.
template <class P>
auto logits_stage(const P& policy, const_matrix_map<float> x, float* z, int nt, workspace& ws) {
  const index T = x.rows();
  if constexpr (linear_logits<P>) {
    const index d = policy.hidden();
    const bool decode = T <= decode_rows && nt > 1;
    float* in = nullptr;  // [T × d] router input, for a transformed_input policy
    if constexpr (transformed_input<P>) in = ws.take<float>(static_cast<std::size_t>(T * d));
    auto* scratch = ws.take<kernels::gemm_scratch>(static_cast<std::size_t>(nt));
    for (int i = 0; i < nt; ++i) scratch[i] = kernels::make_gemm_scratch(decode ? T : (T + nt - 1) / nt, d, ws);
    return [&policy, x, in, z, scratch](int tid, int team, auto&& barrier) noexcept {
      linear_logits_share(policy, x, in, z, scratch[tid], tid, team, barrier);
    };
  } else {
    policy.logits(x, z, policy.columns(), ws);
    return [](int, int, auto&&) noexcept {};
  }
}

}  // namespace detail::token_choice

/// Routes `x [T × d]` into `plan` (`[T × max_slots()]` over num_experts() experts) by running
/// the stages of `policy` on every token, on up to `ctx.threads` threads (0: all), each routing
/// a share of the rows: bitwise the same plan as one thread. Stage 1 runs on the threads too
/// when the policy's logits are linear (detail::token_choice::linear_logits: moe::top_k and the
/// policies built on it), else once on the calling thread. `where` names the caller in errors.
template <token_choice_policy P>
void route_by_stages(const P& policy, const_matrix_map<float> x, const route_context& ctx, routing_plan& plan,
                     workspace& ws, const char* where = "moe::route_by_stages") {
  detail::check_extent(where, "x.cols()", x.cols(), policy.hidden());
  const index T = x.rows();
  const index C = policy.columns();
  plan.reset(T, policy.max_slots(), policy.num_experts());
  if (T == 0) return;
  const int nt = detail::token_choice::threads_for(ctx, T);
  float* z = ws.take<float>(static_cast<std::size_t>(T * C));  // [T × C]
  detail::token_choice::route_rows(policy, z, T, nt, plan, ws, detail::token_choice::logits_stage(policy, x, z, nt, ws),
                                   where, "x");
}

/// route_by_stages() with a default context (all threads).
template <token_choice_policy P>
void route_by_stages(const P& policy, const_matrix_map<float> x, routing_plan& plan, workspace& ws,
                     const char* where = "moe::route_by_stages") {
  route_by_stages(policy, x, route_context{}, plan, ws, where);
}

/// Like route_by_stages() from precomputed raw logits `z = W x [T × columns()]` (copied): the
/// linear map is skipped, the policy's scale_logits() stage (its temperature) is applied once,
/// so that this routes `W x` as route_by_stages() routes x; on up to `ctx.threads` threads.
template <token_choice_policy P>
void route_logits_by_stages(const P& policy, const_matrix_map<float> z, routing_plan& plan, workspace& ws,
                            const char* where = "moe::route_logits_by_stages", const route_context& ctx = {}) {
  const index C = policy.columns();
  detail::check_extent(where, "z.cols()", z.cols(), C);
  const index T = z.rows();
  plan.reset(T, policy.max_slots(), policy.num_experts());
  if (T == 0) return;
  float* copy = ws.take<float>(static_cast<std::size_t>(T * C));  // [T × C]
  detail::token_choice::route_rows(policy, copy, T, detail::token_choice::threads_for(ctx, T), plan, ws,
                                   [&](int tid, int team, auto&&) {
    const auto rows = detail::share_of(T, tid, team);
    detail::copy_rows(z, rows.begin, rows.end, copy);
    detail::token_choice::scale(policy, copy + rows.begin * C, rows.end - rows.begin, C);
  }, where, "z");
}

namespace detail::token_choice {

/// Stand-in options type of a policy that has no `options()`.
struct no_options {};

/// The options type of a policy (`decltype(p.options())` without cv-ref), or no_options.
template <class P>
struct options_of {
  using type = no_options;
};
template <class P>
  requires requires(const P& p) { p.options(); }
struct options_of<P> {
  using type = std::remove_cvref_t<decltype(std::declval<const P&>().options())>;
};
template <class P>
using options_of_t = typename options_of<P>::type;

}  // namespace detail::token_choice
}  // namespace moe
