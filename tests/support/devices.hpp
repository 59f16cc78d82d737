// SPDX-License-Identifier: Apache-2.0
#pragma once

// The devices that the layer and policy tests are written over (TEMPLATE_LIST_TEST_CASE with
// moe_test::devices), and how each one is set up over a full set of expert weights:
//   - moe_tests: moe::device::serial and moe::device::cpu (2 threads);
//   - moe_mpi_tests (MOE_TEST_MPI, run under mpirun): moe::device::mpi<serial> and
//     moe::device::mpi<cpu>, the experts placed contiguously over the ranks. Every rank runs the
//     same batch, so every rank's output is compared with the same reference.
// A test asks on<Device>::experts(w) for the bank this process holds, on<Device>::device(E) for
// the device, or make_layer<Device>(router, w[, shared]) for both.

#include <tuple>
#include <utility>

#include <moe/device/cpu.hpp>
#include <moe/device/serial.hpp>
#include <moe/experts/shared.hpp>
#include <moe/experts/swiglu.hpp>
#include <moe/layer.hpp>

#include "layers.hpp"

#ifdef MOE_TEST_MPI
#include <mpi.h>

#include <moe/device/mpi.hpp>
#include <moe/device/placement.hpp>
#endif

namespace moe_test {

using bank = moe::swiglu_experts<float>;

template <class Device>
struct on;

template <>
struct on<moe::device::serial> {
  static moe::device::serial device(index /*experts*/) { return {}; }
  static bank experts(const naive_swiglu& w) { return make_bank(w); }
};

template <>
struct on<moe::device::cpu> {
  static moe::device::cpu device(index /*experts*/) { return moe::device::cpu{2}; }
  static bank experts(const naive_swiglu& w) { return make_bank(w); }
};

#ifdef MOE_TEST_MPI
inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

/// The experts `ids` of a full bank, stacked in that order: what a rank loads for its share.
inline bank select_experts(const naive_swiglu& w, std::span<const index> ids) {
  const index d = w.d, f = w.f, n = static_cast<index>(ids.size());
  if (n == 0) {  // a rank that holds no expert: an empty bank of the same widths
    const float* none = nullptr;
    return bank(none, none, none, moe::swiglu_shape{0, d, f});
  }
  moe::row_matrix<float> gate(n * f, d), up(n * f, d), down(n * d, f);
  for (index i = 0; i < n; ++i) {
    gate.middleRows(i * f, f) = w.gate.middleRows(ids[i] * f, f);
    up.middleRows(i * f, f) = w.up.middleRows(ids[i] * f, f);
    down.middleRows(i * d, d) = w.down.middleRows(ids[i] * d, d);
  }
  return bank(moe::view(gate), moe::view(up), moe::view(down));
}

template <class Inner>
struct on<moe::device::mpi<Inner>> {
  static moe::device::mpi<Inner> device(index experts) {
    return moe::device::mpi<Inner>(moe::placement::contiguous(experts, world_size()), on<Inner>::device(experts));
  }
  static bank experts(const naive_swiglu& w) {
    return select_experts(w, moe::placement::contiguous(w.experts, world_size()).local_experts(world_rank()));
  }
};

using devices = std::tuple<moe::device::mpi<moe::device::serial>, moe::device::mpi<moe::device::cpu>>;
#else
using devices = std::tuple<moe::device::serial, moe::device::cpu>;
#endif

/// A layer of `router` over the experts `w` on Device (on an mpi device: this rank's share).
template <class Device, class Router>
moe::layer<Router, bank, Device> make_layer(Router router, const naive_swiglu& w) {
  return moe::layer<Router, bank, Device>(std::move(router), on<Device>::experts(w), on<Device>::device(w.experts));
}
/// The same with shared experts (every process holds them all).
template <class Device, class Router>
moe::layer<Router, bank, Device> make_layer(Router router, const naive_swiglu& w, moe::shared_experts<bank> shared) {
  return moe::layer<Router, bank, Device>(std::move(router), on<Device>::experts(w), std::move(shared),
                                          on<Device>::device(w.experts));
}

}  // namespace moe_test
