// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// moe::device::mpi<Inner>: expert parallelism over MPI (docs/architecture.md §5.3). Needs an MPI
// implementation (Open MPI: libopenmpi-dev); nothing else in moe includes this header.
//
// Each rank holds a share of the experts (a moe::placement) and routes its own tokens. A forward:
//   1. agreement: one MPI_Allgather of a small record (d, E, the placement's fingerprint, the
//      bank's expert count, and whether this rank's inputs were valid), so that a rank with bad
//      input makes every rank throw the same moe::error instead of leaving the others waiting;
//   2. counts (MPI_Alltoall), then the token rows (MPI_Ialltoallv with a row datatype, so counts
//      are rows and stay in int range; a count that would not is an error) and the local slot of
//      each row's expert, to the ranks that hold the experts;
//   3. while they are in flight, a single shared expert runs on the token's own rank;
//   4. the receiving rank computes the raw expert outputs with Inner (weight 1), sends them back;
//   5. the source combines `y_t = fma(w, out, y_t)` in ascending expert order, exactly as one
//      process does, then adds shared experts and the output scale.
// Expert outputs do not depend on the batch (the canonical kernels), so y is bitwise equal to
// one process running the whole batch, for any rank count and any placement. Policies that need
// the whole batch (moe::needs_whole_batch) get it: the token rows (and the per-token context) are
// all-gathered, every rank routes the whole batch the same way and keeps its own rows.
//
// MPI must be initialised by the caller (MPI_THREAD_FUNNELED or more: only the calling thread
// communicates; Inner may use threads). Every operation is collective over the communicator:
// every rank calls forward() the same number of times.

#include <mpi.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moe/concepts.hpp"
#include "moe/config.hpp"
#include "moe/core/context.hpp"
#include "moe/core/error.hpp"
#include "moe/plan.hpp"
#include "moe/core/views.hpp"
#include "moe/core/workspace.hpp"
#include "moe/device/cpu.hpp"
#include "moe/device/placement.hpp"
#include "moe/device/schedule.hpp"
#include "moe/device/serial.hpp"
#include "moe/kernels/gemm.hpp"
#include "moe/kernels/math.hpp"

namespace moe {

/// What moe::device::mpi measured in its last run() (after a forward with repeated passes: the
/// last pass).
struct mpi_stats {
  int rank = 0;
  int ranks = 1;
  index rows_sent = 0;       ///< token rows this rank sent to other ranks
  index rows_received = 0;   ///< token rows other ranks sent to this rank
  double bytes_sent = 0;     ///< bytes this rank sent to other ranks (rows out and outputs back)
  double bytes_received = 0;
  index rows_computed = 0;   ///< rows this rank's experts computed (its load)
  std::vector<index> load_per_rank;  ///< rows computed by each rank
  double imbalance = 0;      ///< max / mean of load_per_rank (1 is perfect; 0 if nothing ran)
  double seconds_communication = 0;  ///< in collectives and waits
  double seconds_compute = 0;        ///< expert, shared-expert and combine arithmetic
};

namespace detail::mpi_impl {

/// Largest row count one MPI call may carry (counts and displacements are int).
inline constexpr index max_count = INT_MAX;

/// Throws moe::error when a total of rows to or from one rank would not fit MPI's int counts.
inline void check_counts(const char* where, const char* what, std::span<const index> counts) {
  index total = 0;
  for (std::size_t r = 0; r < counts.size(); ++r) {
    total += counts[r];
    if (counts[r] > max_count || total > max_count) {
      fail_parameter(error_id::shape, where, concat(what, " rows (up to rank ", r, ")"),
                     concat("<= INT_MAX = ", max_count, " (MPI counts are int; split the batch)"), total);
    }
  }
}

inline void check_mpi(int rc, const char* call) {
  if (rc != MPI_SUCCESS) {
    char text[MPI_MAX_ERROR_STRING];
    int n = 0;
    MPI_Error_string(rc, text, &n);
    throw_error(error_id::input, concat("moe::device::mpi: ", call, " failed: ", std::string(text, static_cast<std::size_t>(n))));
  }
}

/// A committed contiguous datatype of `d` floats (one token row), created on first use and kept
/// while `d` stays the same; a copy creates its own. Freed unless MPI is already finalised.
class row_type {
 public:
  row_type() = default;
  row_type(const row_type&) noexcept {}
  row_type& operator=(const row_type&) noexcept {
    release();
    return *this;
  }
  ~row_type() { release(); }
  MPI_Datatype get(index d) {
    if (m_type != MPI_DATATYPE_NULL && m_d == d) return m_type;
    release();
    check_mpi(MPI_Type_contiguous(static_cast<int>(d), MPI_FLOAT, &m_type), "MPI_Type_contiguous");
    check_mpi(MPI_Type_commit(&m_type), "MPI_Type_commit");
    m_d = d;
    return m_type;
  }

 private:
  void release() noexcept {
    if (m_type == MPI_DATATYPE_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Type_free(&m_type);
    m_type = MPI_DATATYPE_NULL;
  }
  MPI_Datatype m_type = MPI_DATATYPE_NULL;
  index m_d = -1;
};

/// The record every rank contributes to the agreement of one step.
struct agreement {
  std::int64_t ok = 1;
  std::int64_t hidden = 0;
  std::int64_t experts = 0;
  std::int64_t local_experts = 0;
  std::int64_t fingerprint = 0;
  std::int64_t ranks = 0;
};

/// Host scratch of one device, reused by every forward (sized on first use: a steady-state
/// forward allocates nothing).
struct scratch {
  std::vector<agreement> agreements;
  std::vector<index> send_count, recv_count, cursor, gathered_starts;
  std::vector<int> dest, sc, rc, sd, rd, counts, displs;
  std::vector<index> slot, pos;
  std::vector<std::int64_t> loads, my_starts, start_counts, all_starts;
  std::vector<std::array<std::int64_t, 5>> sizes;
  std::vector<float> packed, gx, gblock, gatt;
  std::vector<std::uint8_t> my_cond, gcond;
  row_type row;
};

}  // namespace detail::mpi_impl

namespace device {

/// Expert parallelism over MPI: each rank holds the experts its moe::placement gives it, routes
/// its own tokens and runs its experts with `Inner` (moe::device::serial or moe::device::cpu).
/// The bank handed to the layer holds this rank's experts only, in placement order; the router
/// is the same on every rank. Outputs equal one process running the whole batch (all ranks'
/// tokens in rank order), bit for bit.
template <class Inner = cpu>
class mpi {
 public:
  using device_type = mpi;
  using memory_space = host_memory;
  using workspace_type = workspace;
  using inner_type = Inner;
  static constexpr const char* name() noexcept { return "mpi"; }

  /// Collective: every rank of `comm` constructs its device with the same placement (checked at
  /// the first forward and by the layer's constructor). The placement must have one entry per
  /// rank of `comm`.
  explicit mpi(moe::placement placement, Inner inner = {}, MPI_Comm comm = MPI_COMM_WORLD)
      : m_placement(std::move(placement)), m_inner(std::move(inner)), m_comm(comm) {
    detail::mpi_impl::check_mpi(MPI_Comm_rank(m_comm, &m_rank), "MPI_Comm_rank");
    detail::mpi_impl::check_mpi(MPI_Comm_size(m_comm, &m_ranks), "MPI_Comm_size");
    agreed("moe::device::mpi", record(0, m_placement.num_experts(), 0), [&] {
      if (m_placement.num_ranks() == m_ranks) return;
      detail::fail_parameter(error_id::config, "moe::device::mpi", "placement.num_ranks()",
                             detail::concat("equal to the communicator size ", m_ranks), m_placement.num_ranks());
    });
  }

  [[nodiscard]] const moe::placement& placement() const noexcept { return m_placement; }
  [[nodiscard]] const Inner& inner() const noexcept { return m_inner; }
  [[nodiscard]] int rank() const noexcept { return m_rank; }
  [[nodiscard]] int ranks() const noexcept { return m_ranks; }
  [[nodiscard]] MPI_Comm communicator() const noexcept { return m_comm; }
  /// Threads of the inner device (the router's threads on this rank).
  [[nodiscard]] int concurrency() const noexcept {
    if constexpr (requires { m_inner.concurrency(); }) {
      return m_inner.concurrency();
    } else {
      return 1;
    }
  }
  /// Whether a single shared expert runs while the token rows are in flight (default true); off,
  /// shared experts run after the combine (the same bits either way: what the overlap buys is
  /// measured in bench/mpi_bench.cpp).
  void set_overlap_shared(bool on) noexcept { m_overlap_shared = on; }
  [[nodiscard]] bool overlap_shared() const noexcept { return m_overlap_shared; }

  /// Statistics of the last run() on this rank (the last pass of a forward).
  [[nodiscard]] const mpi_stats& stats() const noexcept { return m_stats; }

  /// The logical experts this device serves: the placement's.
  template <expert_bank Bank>
  [[nodiscard]] index num_experts(const Bank&) const noexcept {
    return m_placement.num_experts();
  }

  /// Collective check of a layer's parts (the layer's constructor calls it before its own local
  /// checks): every rank must give the same router E and d, a bank with this rank's share of the
  /// placement and the same d. Throws the same moe::error on every rank otherwise.
  template <class Router, expert_bank Bank>
  void check_layer(const Router& router, const Bank& bank) const {
    agreed("moe::layer", record(bank.hidden(), m_placement.num_experts(), bank.num_experts()), [&] {
      constexpr const char* where = "moe::device::mpi";
      detail::check_extent(where, detail::concat("bank.num_experts() on rank ", m_rank), bank.num_experts(),
                           m_placement.local_count(m_rank));
      detail::check_extent(where, "router.num_experts()", router.num_experts(), m_placement.num_experts());
      detail::check_extent(where, "router.hidden()", router.hidden(), bank.hidden());
    });
  }

  /// Runs `checks` on this rank and agree()s on the outcome: any rank's failure throws on every
  /// rank. Collective.
  template <class Checks>
  void agreed(const char* where, detail::mpi_impl::agreement mine, Checks&& checks) const {
    std::exception_ptr local;
    try {
      checks();
    } catch (...) {
      local = std::current_exception();
    }
    agree(local, mine, where);
  }

  /// agree() with this rank's placement record only (for checks made before a pass).
  void agree(std::exception_ptr local, const char* where) const {
    agree(local, record(0, m_placement.num_experts(), m_placement.local_count(m_rank)), where);
  }

  /// Makes every rank see a failure of any rank: rethrows `local` on its rank, and on the others
  /// throws moe::error naming the rank that failed and its message. Also compares the ranks'
  /// records (d, E, placement). Collective.
  void agree(std::exception_ptr local, detail::mpi_impl::agreement mine, const char* where) const {
    std::string message;
    if (local) {
      mine.ok = 0;
      try {
        std::rethrow_exception(local);
      } catch (const std::exception& e) {
        message = e.what();
      } catch (...) {
        message = "unknown exception";
      }
    }
    mine.ranks = m_ranks;
    auto& all = m_s.agreements;
    all.resize(static_cast<std::size_t>(m_ranks));
    detail::mpi_impl::check_mpi(MPI_Allgather(&mine, sizeof mine, MPI_BYTE, all.data(), sizeof mine, MPI_BYTE, m_comm),
                                "MPI_Allgather");
    int failed = -1;
    for (int r = 0; r < m_ranks; ++r) {
      if (!all[r].ok) {
        failed = r;
        break;
      }
    }
    if (failed >= 0) {
      // The failing rank's message, fixed length, to everyone.
      std::array<char, 512> text{};
      if (m_rank == failed) std::strncpy(text.data(), message.c_str(), text.size() - 1);
      detail::mpi_impl::check_mpi(MPI_Bcast(text.data(), static_cast<int>(text.size()), MPI_CHAR, failed, m_comm),
                                  "MPI_Bcast");
      if (m_rank == failed) std::rethrow_exception(local);
      detail::throw_error(error_id::input, detail::concat(where, ": rank ", failed, " failed: ", text.data()));
    }
    const auto& first = all[0];
    const auto field = [&](const char* name, std::int64_t detail::mpi_impl::agreement::*m) {
      for (int r = 1; r < m_ranks; ++r) {
        if (all[r].*m != first.*m) {
          detail::fail_parameter(error_id::config, where, detail::concat(name, " on rank ", r),
                                 detail::concat("equal to rank 0's ", first.*m, " (every rank must agree)"), all[r].*m);
        }
      }
    };
    field("hidden (d)", &detail::mpi_impl::agreement::hidden);
    field("num_experts (E)", &detail::mpi_impl::agreement::experts);
    field("placement fingerprint", &detail::mpi_impl::agreement::fingerprint);
    field("communicator size", &detail::mpi_impl::agreement::ranks);
  }

  /// Routes this rank's tokens (the moe::route_on customisation point). A per-token router routes
  /// locally; a router that needs the whole batch gets it: every rank gathers all ranks' rows and
  /// per-token context, routes the whole batch and keeps its own rows.
  template <class Router>
  void route(const Router& r, const_matrix_map<float> x, const route_context& ctx, routing_plan& plan, workspace& ws,
             bool repeat) const {
    const auto call = [&](const_matrix_map<float> xs, const route_context& c, routing_plan& p) {
      if constexpr (requires { r.route_repeat(xs, c, p, ws); }) {
        if (repeat) {
          r.route_repeat(xs, c, p, ws);
          return;
        }
      }
      r.route(xs, c, p, ws);
    };
    const auto info = record(x.cols(), r.num_experts(), m_placement.local_count(m_rank));
    if constexpr (!needs_whole_batch<Router>()) {
      agreed("moe::device::mpi::route", info, [&] {
        call(x, ctx, plan);
      });
    } else {
      route_whole_batch(call, x, ctx, plan, info);
    }
  }

  /// Bytes of workspace run() takes (the inner device's for the rows this rank may receive are
  /// taken on first use).
  template <expert_bank Bank>
  [[nodiscard]] std::size_t workspace_bytes(const layer_pass<Bank>& pass) const {
    const auto T = static_cast<std::size_t>(pass.plan->num_tokens());
    const auto A = static_cast<std::size_t>(pass.plan->total_assignments());
    const auto d = static_cast<std::size_t>(pass.x.cols());
    return (2 * A * d + T * d) * sizeof(float) + A * (sizeof(index) + sizeof(std::int32_t)) + 4096;
  }

  /// `y = s · (routed + shared)` for this rank's tokens (see the header comment). Collective.
  template <detail::host_ffn_bank Bank>
  void run(const layer_pass<Bank>& pass, matrix_map<float> y, workspace& ws) const {
    namespace im = detail::mpi_impl;
    const routing_plan& plan = *pass.plan;
    const Bank& bank = *pass.experts;
    const_matrix_map<float> x = pass.x;
    const index T = x.rows(), d = x.cols();
    const auto R = static_cast<std::size_t>(m_ranks);
    agreed("moe::device::mpi::run", record(d, m_placement.num_experts(), bank.num_experts()), [&] {
      constexpr const char* where = "moe::device::mpi::run";
      if (!plan.has_expert_major()) {
        detail::throw_error(error_id::plan, detail::concat(where, ": parameter 'plan' must have its expert-major view built"));
      }
      detail::check_extent(where, "plan.num_experts()", plan.num_experts(), m_placement.num_experts());
      detail::check_extent(where, "bank.num_experts()", bank.num_experts(), m_placement.local_count(m_rank));
      detail::check_extent(where, "x.rows()", x.rows(), plan.num_tokens());
      detail::check_operands(where, x, bank, y);
    });
    reset_stats();
    double t_comm = 0, t_compute = 0;
    double t0 = MPI_Wtime();

    // 1. Destinations: every entry of the expert-major view, in its order (ascending expert).
    const auto entries = plan.entries();
    const auto A = entries.size();
    auto& send_count = m_s.send_count;
    auto& recv_count = m_s.recv_count;
    send_count.assign(R, 0);
    recv_count.assign(R, 0);
    auto& dest = m_s.dest;
    dest.resize(A);
    auto& slot = m_s.slot;
    slot.resize(A);
    for (index e = 0; e < plan.num_experts(); ++e) {
      for (const auto& en : plan.entries(e)) {
        const auto loc = m_placement.replica_for(e, m_rank, en.token);
        const auto i = static_cast<std::size_t>(&en - entries.data());
        dest[i] = loc.rank;
        slot[i] = loc.slot;
        ++send_count[static_cast<std::size_t>(loc.rank)];
      }
    }
    agreed("moe::device::mpi::run", record(d, m_placement.num_experts(), bank.num_experts()),
           [&] { im::check_counts("moe::device::mpi::run", "sent", send_count); });
    // 2. Counts, then rows and local slots.
    auto &sc = m_s.sc, &rc = m_s.rc, &sd = m_s.sd, &rd = m_s.rd;
    sc.resize(R);
    rc.resize(R);
    sd.resize(R);
    rd.resize(R);
    for (std::size_t r = 0; r < R; ++r) sc[r] = static_cast<int>(send_count[r]);
    im::check_mpi(MPI_Alltoall(sc.data(), 1, MPI_INT, rc.data(), 1, MPI_INT, m_comm), "MPI_Alltoall");
    for (std::size_t r = 0; r < R; ++r) recv_count[r] = rc[r];
    agreed("moe::device::mpi::run", record(d, m_placement.num_experts(), bank.num_experts()),
           [&] { im::check_counts("moe::device::mpi::run", "received", recv_count); });
    index total_send = 0, total_recv = 0;
    for (std::size_t r = 0; r < R; ++r) {
      sd[r] = static_cast<int>(total_send);
      rd[r] = static_cast<int>(total_recv);
      total_send += sc[r];
      total_recv += rc[r];
    }
    float* send_rows = ws.take<float>(static_cast<std::size_t>(std::max<index>(total_send * d, 1)));
    float* recv_rows = ws.take<float>(static_cast<std::size_t>(std::max<index>(total_recv * d, 1)));
    auto* send_slot = ws.take<std::int32_t>(static_cast<std::size_t>(std::max<index>(total_send, 1)));
    auto* recv_slot = ws.take<std::int32_t>(static_cast<std::size_t>(std::max<index>(total_recv, 1)));
    auto& pos = m_s.pos;  // position of each entry's row in the send (and return) buffer
    pos.resize(A);
    {
      auto& cursor = m_s.cursor;
      cursor.resize(R);
      for (std::size_t r = 0; r < R; ++r) cursor[r] = sd[r];
      for (std::size_t i = 0; i < A; ++i) {
        const index p = cursor[static_cast<std::size_t>(dest[i])]++;
        pos[i] = p;
        send_slot[p] = static_cast<std::int32_t>(slot[i]);
        const float* src = x.data() + entries[i].token * x.outerStride();
        if (plan.input_weighted()) {  // Llama 4: the expert sees w · x_t and its output is combined with weight 1
          for (index c = 0; c < d; ++c) send_rows[p * d + c] = entries[i].weight * src[c];
        } else {
          std::memcpy(send_rows + p * d, src, sizeof(float) * static_cast<std::size_t>(d));
        }
      }
    }
    const MPI_Datatype row = m_s.row.get(std::max<index>(d, 1));
    MPI_Request req[2];
    im::check_mpi(MPI_Ialltoallv(send_rows, sc.data(), sd.data(), row, recv_rows, rc.data(), rd.data(), row, m_comm, &req[0]),
                  "MPI_Ialltoallv");
    im::check_mpi(MPI_Ialltoallv(send_slot, sc.data(), sd.data(), MPI_INT32_T, recv_slot, rc.data(), rd.data(), MPI_INT32_T,
                                 m_comm, &req[1]),
                  "MPI_Ialltoallv");
    double t1 = MPI_Wtime();
    t_comm += t1 - t0;

    // 3. A single shared expert runs while the rows are in flight: its raw output per token.
    const bool overlap_shared = m_overlap_shared && pass.shared && pass.shared->bank().num_experts() == 1;
    float* shared_out = nullptr;
    float* shared_gate = nullptr;
    index shared_rows = 0;
    if (overlap_shared) {
      shared_out = shared_raw(pass, ws, shared_gate, shared_rows);
    }
    double t2 = MPI_Wtime();
    t_compute += t2 - t1;
    im::check_mpi(MPI_Waitall(2, req, MPI_STATUSES_IGNORE), "MPI_Waitall");
    double t3 = MPI_Wtime();
    t_comm += t3 - t2;

    // 4. This rank's experts on the rows it received (weight 1: raw outputs), sent back.
    float* out_rows = ws.take<float>(static_cast<std::size_t>(std::max<index>(total_recv * d, 1)));
    {
      routing_plan& lp = m_local_plan;
      lp.reset(total_recv, 1, bank.num_experts());
      for (index i = 0; i < total_recv; ++i) lp.set(i, 0, recv_slot[i], 1.0f);
      lp.build_expert_major();
      m_inner.dispatch(lp, map(static_cast<const float*>(recv_rows), total_recv, d), bank, map(out_rows, total_recv, d), ws);
    }
    float* back_rows = ws.take<float>(static_cast<std::size_t>(std::max<index>(total_send * d, 1)));
    double t4 = MPI_Wtime();
    t_compute += t4 - t3;
    im::check_mpi(MPI_Alltoallv(out_rows, rc.data(), rd.data(), row, back_rows, sc.data(), sd.data(), row, m_comm),
                  "MPI_Alltoallv");
    double t5 = MPI_Wtime();
    t_comm += t5 - t4;

    // 5. Combine at the source in ascending expert order, as one process does.
    for (index t = 0; t < T; ++t) std::memset(y.data() + t * y.outerStride(), 0, sizeof(float) * static_cast<std::size_t>(d));
    for (std::size_t i = 0; i < A; ++i) {
      combine_row(y.data() + entries[i].token * y.outerStride(), back_rows + pos[i] * d,
                  plan.input_weighted() ? 1.0f : entries[i].weight, d);
    }
    if (overlap_shared) {
      for (index t = 0, j = 0; t < T; ++t) {
        if (!pass.runs(t)) continue;
        combine_row(y.data() + t * y.outerStride(), shared_out + j * d, shared_gate ? shared_gate[j] : 1.0f, d);
        ++j;
      }
      detail::host_add_identity(pass, y);
      detail::host_scale_rows(pass, y);
    } else {
      detail::host_shared_and_scale(m_inner, pass, y, ws);
    }
    double t6 = MPI_Wtime();
    t_compute += t6 - t5;

    // Statistics: rows to and from other ranks, and every rank's load.
    const auto me = static_cast<std::size_t>(m_rank);
    m_stats.rows_sent = total_send - send_count[me];
    m_stats.rows_received = total_recv - recv_count[me];
    const double row_bytes = static_cast<double>(d) * sizeof(float);
    m_stats.bytes_sent = static_cast<double>(m_stats.rows_sent) * (row_bytes + sizeof(std::int32_t)) +
                         static_cast<double>(m_stats.rows_received) * row_bytes;
    m_stats.bytes_received = static_cast<double>(m_stats.rows_received) * (row_bytes + sizeof(std::int32_t)) +
                             static_cast<double>(m_stats.rows_sent) * row_bytes;
    m_stats.rows_computed = total_recv;
    auto& loads = m_s.loads;
    loads.resize(R);
    const std::int64_t mine = total_recv;
    im::check_mpi(MPI_Allgather(&mine, 1, MPI_INT64_T, loads.data(), 1, MPI_INT64_T, m_comm), "MPI_Allgather");
    m_stats.load_per_rank.assign(loads.begin(), loads.end());
    index mx = 0, sum = 0;
    for (auto l : loads) {
      mx = std::max<index>(mx, l);
      sum += l;
    }
    m_stats.imbalance = sum > 0 ? static_cast<double>(mx) * static_cast<double>(R) / static_cast<double>(sum) : 0.0;
    m_stats.seconds_communication = t_comm + (MPI_Wtime() - t6);
    m_stats.seconds_compute = t_compute;
  }

  /// The largest `v` over the ranks (collective): the layer runs as many passes as any rank needs.
  [[nodiscard]] int max_over_processes(int v) const {
    int out = v;
    detail::mpi_impl::check_mpi(MPI_Allreduce(&v, &out, 1, MPI_INT, MPI_MAX, m_comm), "MPI_Allreduce");
    return out;
  }

  /// `out = a + b` (host rows).
  static void add(const_matrix_map<float> a, const_matrix_map<float> b, matrix_map<float> out) {
    detail::host_device_ops<Inner>::add(a, b, out);
  }
  /// `out_t += a_t` where mask[t].
  static void accumulate(const_matrix_map<float> a, const std::uint8_t* mask, matrix_map<float> out) {
    detail::host_device_ops<Inner>::accumulate(a, mask, out);
  }

 private:
  [[nodiscard]] detail::mpi_impl::agreement record(index d, index E, index local) const noexcept {
    detail::mpi_impl::agreement a;
    a.hidden = d;
    a.experts = E;
    a.local_experts = local;
    a.fingerprint = static_cast<std::int64_t>(m_placement.fingerprint());
    return a;
  }

  // Clears the statistics of the last run, keeping load_per_rank's storage.
  void reset_stats() const noexcept {
    auto loads = std::move(m_stats.load_per_rank);
    m_stats = {};
    m_stats.load_per_rank = std::move(loads);
    m_stats.rank = m_rank;
    m_stats.ranks = m_ranks;
  }

  // y[0..d) = fma(w, v[0..d), y[0..d)): the combine of the host schedule's down epilogue.
  static void combine_row(float* y, const float* v, float w, index d) noexcept {
    using batch = xsimd::batch<float, kernels::gemm_arch>;
    constexpr index L = static_cast<index>(batch::size);
    const batch wb(w);
    index i = 0;
    for (; i + L <= d; i += L) {
      kernels::fmadd(wb, batch::load_unaligned(v + i), batch::load_unaligned(y + i)).store_unaligned(y + i);
    }
    for (; i < d; ++i) y[i] = kernels::fmadd(w, v[i], y[i]);
  }

  // Raw outputs `[n × d]` of the single shared expert for the tokens that run (weight 1), and
  // their gates (null when ungated).
  template <class Bank>
  float* shared_raw(const layer_pass<Bank>& pass, workspace& ws, float*& gate, index& n) const {
    const auto& shared = *pass.shared;
    const_matrix_map<float> x = pass.x;
    const index T = x.rows(), d = x.cols();
    n = 0;
    for (index t = 0; t < T; ++t) n += pass.runs(t);
    float* out = ws.take<float>(static_cast<std::size_t>(std::max<index>(n * d, 1)));
    gate = nullptr;
    if (n == 0) return out;
    const float* rows = x.data();
    index ld = x.outerStride();
    if (n != T) {
      float* xc = ws.take<float>(static_cast<std::size_t>(n * d));
      for (index t = 0, i = 0; t < T; ++t) {
        if (!pass.runs(t)) continue;
        std::memcpy(xc + i * d, x.data() + t * x.outerStride(), sizeof(float) * static_cast<std::size_t>(d));
        ++i;
      }
      rows = xc;
      ld = d;
    }
    const auto xv = map(rows, n, d, ld);
    if (shared.gated()) {
      gate = ws.take<float>(static_cast<std::size_t>(n));
      shared.gates(xv, gate, ws);
    }
    auto ov = map(out, n, d);
    ov.setZero();
    m_inner.accumulate_dense(xv, shared.bank(), nullptr, ov, ws);
    return out;
  }

  template <class Call>
  void route_whole_batch(const Call& call, const_matrix_map<float> x, const route_context& ctx, routing_plan& plan,
                         detail::mpi_impl::agreement info) const {
    namespace im = detail::mpi_impl;
    const auto R = static_cast<std::size_t>(m_ranks);
    const index d = x.cols();
    // Token counts and what context each rank gives.
    std::array<std::int64_t, 5> mine = {x.rows(), static_cast<std::int64_t>(ctx.sequence_starts.size()),
                                        static_cast<std::int64_t>(ctx.conditional.size()),
                                        static_cast<std::int64_t>(ctx.attention.size()), ctx.block_input ? 1 : 0};
    auto& all = m_s.sizes;
    all.resize(R);
    agreed("moe::device::mpi::route", info, [&] {
      if (ctx.block_input) {
        detail::check_extent("moe::device::mpi::route", "ctx.block_input->rows()", ctx.block_input->rows(), x.rows());
        detail::check_extent("moe::device::mpi::route", "ctx.block_input->cols()", ctx.block_input->cols(), d);
      }
      if (!ctx.conditional.empty()) {
        detail::check_extent("moe::device::mpi::route", "ctx.conditional.size()", static_cast<index>(ctx.conditional.size()), x.rows());
      }
    });
    im::check_mpi(MPI_Allgather(mine.data(), 5, MPI_INT64_T, all.data(), 5, MPI_INT64_T, m_comm), "MPI_Allgather");
    index total = 0, offset = 0;
    for (std::size_t r = 0; r < R; ++r) {
      if (static_cast<int>(r) == m_rank) offset = total;
      total += all[r][0];
    }
    agreed("moe::device::mpi::route", info, [&] {
      for (int k = 2; k <= 4; ++k) {
        for (std::size_t r = 1; r < R; ++r) {
          if ((all[r][k] > 0) != (all[0][k] > 0) && !(k == 2 && (all[r][0] == 0 || all[0][0] == 0))) {
            static const char* names[] = {"", "", "ctx.conditional", "ctx.attention", "ctx.block_input"};
            detail::fail_parameter(error_id::input, "moe::device::mpi::route", detail::concat(names[k], " on rank ", r),
                                   detail::concat(all[0][k] > 0 ? "given" : "absent", ", as on rank 0 (a whole-batch policy routes "
                                                  "every rank's tokens together)"),
                                   all[r][k] > 0 ? "given" : "absent");
          }
        }
      }
      const std::array<index, 1> gathered = {total};
      im::check_counts("moe::device::mpi::route", "gathered", gathered);
    });
    auto &counts = m_s.counts, &displs = m_s.displs;
    counts.resize(R);
    displs.resize(R);
    const auto gather = [&](const void* send, int n, void* recv, MPI_Datatype type, auto count_of) {
      int at = 0;
      for (std::size_t r = 0; r < R; ++r) {
        counts[r] = static_cast<int>(count_of(r));
        displs[r] = at;
        at += counts[r];
      }
      im::check_mpi(MPI_Allgatherv(send, n, type, recv, counts.data(), displs.data(), type, m_comm), "MPI_Allgatherv");
    };
    const MPI_Datatype row = m_s.row.get(std::max<index>(d, 1));
    // This rank's rows of m, packed contiguously (the scratch's `packed`).
    const auto pack = [&](const_matrix_map<float> m) {
      m_s.packed.resize(static_cast<std::size_t>(std::max<index>(m.rows() * d, 1)));
      for (index t = 0; t < m.rows(); ++t) {
        std::memcpy(m_s.packed.data() + t * d, m.data() + t * m.outerStride(), sizeof(float) * static_cast<std::size_t>(d));
      }
      return m_s.packed.data();
    };
    auto& gx = m_s.gx;
    gx.resize(static_cast<std::size_t>(std::max<index>(total * d, 1)));
    gather(pack(x), static_cast<int>(x.rows()), gx.data(), row, [&](std::size_t r) { return all[r][0]; });
    route_context g = ctx;
    if (ctx.block_input) {
      auto& gblock = m_s.gblock;
      gblock.resize(static_cast<std::size_t>(std::max<index>(total * d, 1)));
      gather(pack(*ctx.block_input), static_cast<int>(x.rows()), gblock.data(), row, [&](std::size_t r) { return all[r][0]; });
      g.block_input.emplace(map(static_cast<const float*>(gblock.data()), total, d));
    }
    // Sequences: each rank's starts (or one sequence of its rows) shifted by its offset.
    {
      auto& ms = m_s.my_starts;
      ms.clear();
      if (!ctx.sequence_starts.empty()) {
        for (index s : ctx.sequence_starts) ms.push_back(s + offset);
      } else if (x.rows() > 0) {
        ms.push_back(offset);
      }
      auto& ns = m_s.start_counts;
      ns.resize(R);
      const std::int64_t n = static_cast<std::int64_t>(ms.size());
      im::check_mpi(MPI_Allgather(&n, 1, MPI_INT64_T, ns.data(), 1, MPI_INT64_T, m_comm), "MPI_Allgather");
      std::int64_t sum = 0;
      for (auto v : ns) sum += v;
      auto& gs = m_s.all_starts;
      gs.resize(static_cast<std::size_t>(std::max<std::int64_t>(sum, 1)));
      gather(ms.data(), static_cast<int>(n), gs.data(), MPI_INT64_T, [&](std::size_t r) { return ns[r]; });
      m_s.gathered_starts.assign(gs.begin(), gs.begin() + sum);
      g.sequence_starts = m_s.gathered_starts;
    }
    if (all[0][2] > 0 || std::any_of(all.begin(), all.end(), [](const auto& a) { return a[2] > 0; })) {
      auto& gcond = m_s.gcond;
      gcond.resize(static_cast<std::size_t>(std::max<index>(total, 1)));
      auto& mc = m_s.my_cond;
      mc.assign(ctx.conditional.begin(), ctx.conditional.end());
      if (mc.empty()) mc.assign(static_cast<std::size_t>(x.rows()), 1);  // no flags: conditional
      gather(mc.data(), static_cast<int>(mc.size()), gcond.data(), MPI_UINT8_T, [&](std::size_t r) { return all[r][2] > 0 ? all[r][2] : all[r][0]; });
      g.conditional = std::span<const std::uint8_t>(gcond.data(), static_cast<std::size_t>(total));
    }
    if (all[0][3] > 0) {
      std::int64_t sum = 0;
      for (const auto& a : all) sum += a[3];
      auto& gatt = m_s.gatt;
      gatt.resize(static_cast<std::size_t>(std::max<std::int64_t>(sum, 1)));
      gather(ctx.attention.data(), static_cast<int>(ctx.attention.size()), gatt.data(), MPI_FLOAT, [&](std::size_t r) { return all[r][3]; });
      g.attention = std::span<const float>(gatt.data(), static_cast<std::size_t>(sum));
    }
    // Every rank routes the whole batch the same way, then keeps its rows.
    agreed("moe::device::mpi::route", info, [&] {
      call(map(static_cast<const float*>(gx.data()), total, d), g, m_global_plan);
    });
    slice(m_global_plan, offset, x.rows(), plan);
  }

  // Rows [begin, begin + n) of a whole-batch plan. dropped() is the whole batch's.
  static void slice(const routing_plan& g, index begin, index n, routing_plan& out) {
    const index K = g.max_slots();
    out.reset(n, K, g.num_experts());
    for (index t = 0; t < n; ++t) {
      for (index s = 0; s < K; ++s) out.set(t, s, g.expert(begin + t, s), g.weight(begin + t, s));
      out.set_passes(t, g.passes(begin + t));
      if (g.has_output_scale()) out.set_output_scale(t, g.output_scale(begin + t));
      if (g.has_entropy()) out.set_entropy(t, g.entropy(begin + t));
      if (g.has_top_score()) out.set_top_score(t, g.top_score(begin + t));
      if (g.has_identity()) out.add_identity(t, g.identity_weight(begin + t));
    }
    out.set_input_weighted(g.input_weighted());
    out.add_dropped(g.dropped());
  }

  moe::placement m_placement;
  Inner m_inner;
  MPI_Comm m_comm;
  int m_rank = 0;
  int m_ranks = 1;
  bool m_overlap_shared = true;
  mutable mpi_stats m_stats;
  mutable routing_plan m_local_plan;
  mutable routing_plan m_global_plan;
  mutable detail::mpi_impl::scratch m_s;
};

}  // namespace device
}  // namespace moe
