// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: The moe authors
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "moe/config.hpp"

namespace moe::detail {

/// Threads available to a parallel region when none is requested.
inline int default_threads() noexcept {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Runs `body(tid, threads, barrier)` on a team of up to `threads` threads (OpenMP; the calling
/// thread alone without OpenMP or when threads <= 1). `barrier()` synchronises the team. The body
/// must not throw: record failures and report them after the region.
template <class Body>
void parallel_region(int threads, Body&& body) noexcept {
#if defined(_OPENMP)
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      body(omp_get_thread_num(), omp_get_num_threads(), [] {
#pragma omp barrier
      });
    }
    return;
  }
#endif
  body(0, 1, [] {});
}

/// The half-open share `[begin, end)` of `n` items that thread `tid` of `threads` takes.
struct share {
  index begin, end;
};
constexpr share share_of(index n, int tid, int threads) noexcept {
  return {n * tid / threads, n * (tid + 1) / threads};
}

}  // namespace moe::detail
