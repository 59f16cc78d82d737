// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

// The fused routing kernel and the counting-sort kernels of moe::device::cuda: thin __global__
// wrappers over routing_math.hpp, launched over the grid that host_emulation (host_emulation.hpp)
// walks on the CPU. Launch functions return cudaError_t and never throw.
//
// Status: compiled by nvcc; the logic is tested on the host in every build
// (tests/device/cuda_logic_test.cpp); the kernels themselves run only under bench/gpu/run.sh.

#include <cuda_runtime.h>

#include <cstdint>

#include "moe/device/cuda/routing_math.hpp"

namespace moe::kernels::cuda {

/// The 16 lanes of a row on the GPU: a half-warp, synchronised with __syncwarp.
struct half_warp_lanes {
  int lane;
  unsigned mask;
  template <class F>
  __device__ void lanes(F&& f) const {
    f(lane);
    __syncwarp(mask);
  }
};

/// One row per half-warp, routing_rows_per_block rows per block; dynamic shared memory holds
/// each row's scratch (row_scratch_bytes(C, G) bytes a row).
static __global__ void __launch_bounds__(routing_rows_per_block * row_lanes)
    routing_kernel(row_policy pol, float* z, std::int64_t T, batch_output out, std::size_t row_bytes) {
  extern __shared__ __align__(16) unsigned char smem[];
  const row_lane rl = routing_row_of(blockIdx.x, static_cast<int>(threadIdx.x));
  if (rl.row >= T) return;  // the whole half-warp leaves together
  const unsigned mask = 0xffffu << (16 * ((threadIdx.x / 16) % 2));
  row_state* s = carve_row_scratch(smem + rl.row_in_block * row_bytes, pol.columns, pol.n_groups);
  route_row(half_warp_lanes{rl.lane, mask}, pol, z + rl.row * pol.columns, *s, out.row(rl.row, pol.k));
}

/// Launches the routing kernel over `z [T × C]` (device memory, modified in place).
inline cudaError_t launch_routing(const row_policy& pol, float* z, std::int64_t T, const batch_output& out,
                                  cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const std::size_t row_bytes = row_scratch_bytes(pol.columns, pol.n_groups);
  const std::size_t smem = row_bytes * routing_rows_per_block;
  cudaError_t st = cudaFuncSetAttribute(routing_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (st != cudaSuccess) return st;
  routing_kernel<<<static_cast<unsigned>(routing_blocks(T)), routing_rows_per_block * row_lanes, smem, stream>>>(
      pol, z, T, out, row_bytes);
  return cudaGetLastError();
}

// ---- Counting sort (routing_math.hpp steps 1-4), one thread per tile / expert.

static __global__ void sort_count_kernel(std::int64_t tiles, std::int64_t tile, const std::int32_t* experts,
                                  const float* weights, std::int64_t slots, int E, std::int32_t* counts,
                                  unsigned long long* bad_slot) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tiles) return;
  std::int64_t bad = -1;
  sort_count_tile(i, tile, experts, weights, slots, E, counts, &bad);
  if (bad >= 0) atomicMin(bad_slot, static_cast<unsigned long long>(bad));
}

static __global__ void sort_scan_kernel(std::int64_t tiles, int E, std::int32_t* counts, std::int64_t* totals) {
  const int e = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (e < E) sort_scan_expert(e, tiles, E, counts, totals);
}

static __global__ void sort_offsets_kernel(int E, const std::int64_t* totals, std::int64_t* offsets) {
  if (blockIdx.x == 0 && threadIdx.x == 0) sort_offsets(E, totals, offsets);
}

static __global__ void sort_place_kernel(std::int64_t tiles, std::int64_t tile, const std::int32_t* experts,
                                  const float* weights, std::int64_t slots, int K, int E, std::int32_t* counts,
                                  const std::int64_t* offsets, sort_entry* entries) {
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < tiles) sort_place_tile(i, tile, experts, weights, slots, K, E, counts, offsets, entries);
}

/// Device scratch of the sort: `counts [tiles × E]`, `totals [E]`, `bad_slot [1]`.
struct sort_scratch {
  std::int32_t* counts;
  std::int64_t* totals;
  unsigned long long* bad_slot;
};

/// Tile size of the sort for A slots over E experts: at least 256 slots, and few enough tiles
/// that counts[tiles × E] stays below 2^24 ints.
inline std::int64_t sort_tile_for(std::int64_t slots, int E) noexcept {
  std::int64_t tile = 256;
  while (sort_tiles(slots, tile) * E > (std::int64_t{1} << 24)) tile *= 2;
  return tile;
}

/// Launches the four sort steps over `experts, weights [T × K]` (device memory) into `offsets
/// [E + 1]` and `entries` (room for T·K). bad_slot holds ~0ull after the sort when every id was
/// valid (else the lowest bad slot).
inline cudaError_t launch_sort(const std::int32_t* experts, const float* weights, std::int64_t T, int K, int E,
                               std::int64_t tile, const sort_scratch& s, std::int64_t* offsets, sort_entry* entries,
                               cudaStream_t stream) {
  const std::int64_t slots = T * K;
  const std::int64_t tiles = sort_tiles(slots, tile);
  cudaError_t st = cudaMemsetAsync(s.bad_slot, 0xff, sizeof(unsigned long long), stream);
  if (st != cudaSuccess) return st;
  if (tiles == 0) {
    st = cudaMemsetAsync(offsets, 0, sizeof(std::int64_t) * static_cast<std::size_t>(E + 1), stream);
    return st;
  }
  const unsigned tb = 128;
  sort_count_kernel<<<static_cast<unsigned>((tiles + tb - 1) / tb), tb, 0, stream>>>(tiles, tile, experts, weights, slots,
                                                                                    E, s.counts, s.bad_slot);
  sort_scan_kernel<<<static_cast<unsigned>((E + tb - 1) / tb), tb, 0, stream>>>(tiles, E, s.counts, s.totals);
  sort_offsets_kernel<<<1, 1, 0, stream>>>(E, s.totals, offsets);
  sort_place_kernel<<<static_cast<unsigned>((tiles + tb - 1) / tb), tb, 0, stream>>>(tiles, tile, experts, weights, slots,
                                                                                    K, E, s.counts, offsets, entries);
  return cudaGetLastError();
}

}  // namespace moe::kernels::cuda
