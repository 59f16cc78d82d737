// SPDX-License-Identifier: Apache-2.0
// Tests of include/moe/core/bf16.hpp and the bf16 paths of include/moe/kernels/gemm.hpp.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <moe/core/bf16.hpp>
#include <moe/device/cpu.hpp>
#include <moe/device/serial.hpp>
#include <moe/experts/swiglu.hpp>
#include <moe/kernels/gemm.hpp>

#include "../support/random.hpp"

namespace {
using moe::index;
using A = moe::kernels::gemm_arch;

TEST_CASE("bf16 rounds to nearest even and keeps inf and NaN", "[kernels][bf16]") {
  CHECK(static_cast<float>(moe::bf16(1.0f)) == 1.0f);
  CHECK(static_cast<float>(moe::bf16(-2.5f)) == -2.5f);
  // 1 + 2^-8 is exactly between 1 and 1 + 2^-7: ties to even (1).
  CHECK(static_cast<float>(moe::bf16(1.0f + 0x1.0p-8f)) == 1.0f);
  // 1 + 3·2^-8 is between 1 + 2^-7 and 1 + 2^-6: ties to even (1 + 2^-6).
  CHECK(static_cast<float>(moe::bf16(1.0f + 3 * 0x1.0p-8f)) == 1.0f + 0x1.0p-6f);
  CHECK(static_cast<float>(moe::bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f)) == 1.0f + 0x1.0p-7f);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(static_cast<float>(moe::bf16(inf)) == inf);
  CHECK(static_cast<float>(moe::bf16(-inf)) == -inf);
  CHECK(std::isnan(static_cast<float>(moe::bf16(std::numeric_limits<float>::quiet_NaN()))));
  CHECK(static_cast<float>(moe::bf16(std::numeric_limits<float>::max())) == inf);  // rounds up past the top
  moe_test::rng rng(1);
  for (int i = 0; i < 10000; ++i) {
    const float x = rng.uniform(-100, 100);
    const float r = static_cast<float>(moe::bf16(x));
    CHECK(std::abs(r - x) <= std::abs(x) * 0x1.0p-8f);
  }
}

TEST_CASE("bf16 GEMM equals the pairwise reference bit for bit, portable and vdpbf16ps paths", "[kernels][bf16][gemm]") {
  moe_test::rng rng(2);
  for (const index n : {5, 32, 70}) {
    for (const index k : {1, 2, 7, 300}) {
      for (const index rows : {1, 12, 13, 30}) {
        auto w = rng.matrix(n, k);
        auto x = rng.matrix(rows, k);
        std::vector<moe::bf16> wb(static_cast<std::size_t>(n * k));
        for (index i = 0; i < n * k; ++i) wb[static_cast<std::size_t>(i)] = moe::bf16(w.data()[i]);
        const auto packed = moe::kernels::pack_panels<moe::bf16>(wb.data(), n, k, k, moe::kernels::panel_width<A>);
        std::vector<const float*> ptrs(static_cast<std::size_t>(rows));
        for (index i = 0; i < rows; ++i) ptrs[static_cast<std::size_t>(i)] = x.data() + i * k;
        std::vector<moe::bf16> prow(moe::kernels::packed_rows_size<moe::bf16>(rows, k));
        moe::kernels::pack_rows<moe::bf16>(ptrs.data(), rows, k, prow.data());
        moe::row_matrix<float> want(rows, n);
        moe::kernels::gemm_reference_bf16(x.data(), rows, k, k, wb.data(), n, k, want.data(), n);
        for (const auto kernel : {moe::kernels::bf16_kernel::widen, moe::kernels::bf16_kernel::dot,
                                  moe::kernels::bf16_kernel::automatic}) {
          const bool dot = kernel == moe::kernels::bf16_kernel::dot;
          moe::row_matrix<float> got(rows, n);
          moe::kernels::gemm_tuning tuning;
          tuning.bf16 = kernel;
          tuning.k_block = 64;
          moe::kernels::gemm_packed<A>(prow.data(), rows, packed, 0, packed.panels,
                                       [&](index r0, index mr, index p, const moe::kernels::accumulators<A>& acc) {
                                         moe::kernels::store_tile<A>(acc, mr, got.data() + r0 * n, n, p * packed.width, n);
                                       },
                                       tuning);
          INFO("n " << n << ", k " << k << ", rows " << rows << ", kernel " << static_cast<int>(kernel)
                    << ", vdpbf16ps available " << moe::kernels::bf16_dot_available<A>() << ", preferred "
                    << moe::kernels::bf16_dot_preferred<A>());
          (void)dot;
          REQUIRE(std::memcmp(got.data(), want.data(), sizeof(float) * static_cast<std::size_t>(rows * n)) == 0);
        }
      }
    }
  }
}

}  // namespace

namespace {
using moe::index;
using A = moe::kernels::gemm_arch;

// C = X · Wᵀ through gemm_rows_any with the given bf16 kernel request.
moe::row_matrix<float> run_any(const moe::row_matrix<float>& x, const moe::kernels::packed_matrix<moe::bf16>& w,
                               moe::kernels::bf16_kernel kernel) {
  const index rows = x.rows(), n = w.n;
  std::vector<const float*> ptrs(static_cast<std::size_t>(rows));
  for (index i = 0; i < rows; ++i) ptrs[static_cast<std::size_t>(i)] = x.data() + i * x.cols();
  moe::aligned_buffer<std::byte> scratch(moe::kernels::gemm_rows_scratch_bytes<moe::bf16>(rows, w.k));
  moe::row_matrix<float> c(rows, n);
  moe::kernels::gemm_tuning tuning;
  tuning.bf16 = kernel;
  moe::kernels::gemm_rows_any<A>(ptrs.data(), rows, w, 0, w.panels, scratch.data(),
                                 [&](index r0, index mr, index p, const moe::kernels::accumulators<A>& acc) {
                                   moe::kernels::store_tile<A>(acc, mr, c.data() + r0 * n, n, p * w.width, n);
                                 },
                                 tuning);
  return c;
}

TEST_CASE("bf16 GEMM on every kernel this CPU runs: close to the reference and batch invariant", "[kernels][bf16][amx]") {
  moe_test::rng rng(3);
  const index n = 70, k = 300, rows = 45;
  auto w = rng.matrix(n, k);
  auto x = rng.matrix(rows, k);
  std::vector<moe::bf16> wb(static_cast<std::size_t>(n * k));
  for (index i = 0; i < n * k; ++i) wb[static_cast<std::size_t>(i)] = moe::bf16(w.data()[i]);
  const auto packed = moe::kernels::pack_panels<moe::bf16>(wb.data(), n, k, k, moe::kernels::panel_width<A>);
  moe::row_matrix<float> want(rows, n);
  moe::kernels::gemm_reference_bf16(x.data(), rows, k, k, wb.data(), n, k, want.data(), n);
  INFO("AMX usable: " << moe::kernels::amx_available());
  for (const auto kernel : {moe::kernels::bf16_kernel::automatic, moe::kernels::bf16_kernel::amx,
                            moe::kernels::bf16_kernel::dot, moe::kernels::bf16_kernel::widen}) {
    INFO("kernel " << static_cast<int>(kernel) << " resolves to "
                   << static_cast<int>(moe::kernels::resolve_bf16_kernel<A>(kernel)));
    const auto got = run_any(x, packed, kernel);
    CHECK((got - want).norm() / want.norm() < 1e-6);
    if (moe::kernels::resolve_bf16_kernel<A>(kernel) != moe::kernels::bf16_kernel::amx) {
      CHECK(got == want);  // the FMA kernels follow the reference's order exactly
    }
    for (const index r : {index{0}, index{17}, index{44}}) {
      const moe::row_matrix<float> alone = run_any(x.row(r), packed, kernel);
      CHECK(std::memcmp(alone.data(), got.data() + r * n, sizeof(float) * static_cast<std::size_t>(n)) == 0);
    }
    // 20 rows: AMX runs one block with a partial second tile (rows 16 to 19).
    const moe::row_matrix<float> first20 = run_any(x.topRows(20), packed, kernel);
    CHECK(std::memcmp(first20.data(), got.data(), sizeof(float) * static_cast<std::size_t>(20 * n)) == 0);
  }
}

}  // namespace

namespace {
using moe::index;

TEST_CASE("bf16 experts never read stale scratch: widths that are not multiples of 32, poisoned workspace",
          "[kernels][bf16][experts]") {
  moe_test::rng rng(4);
  for (const auto& [d, f] : {std::pair<index, index>{33, 7}, {40, 70}, {7, 300}}) {
    const index E = 3, T = 20;
    const auto gate = rng.matrix(E * f, d, 0.3f), up = rng.matrix(E * f, d, 0.3f), down = rng.matrix(E * d, f, 0.3f);
    moe::swiglu_experts<moe::bf16> bank(gate, up, down);
    const moe::swiglu_experts<float> fp32(gate, up, down);
    const auto x = rng.matrix(T, d);
    moe::routing_plan plan;
    plan.reset(T, 1, E);
    for (index t = 0; t < T; ++t) plan.set(t, 0, static_cast<std::int32_t>(t % E), 1.0f);
    plan.build_expert_major();
    moe::workspace ws;
    moe::row_matrix<float> y32(T, d);
    ws.reset();
    moe::device::serial{}.dispatch(plan, moe::view(x), fp32, moe::view(y32), ws);
    for (const auto kernel : {moe::kernels::bf16_kernel::automatic, moe::kernels::bf16_kernel::widen,
                              moe::kernels::bf16_kernel::dot}) {
      moe::kernels::gemm_tuning tuning;
      tuning.bf16 = kernel;
      bank.set_tuning(tuning);
      // Fill the workspace with NaN bit patterns (0xffff in every bf16 half), then dispatch.
      ws.reset();
      auto* poison = ws.take<std::uint16_t>(std::size_t{1} << 22);
      std::fill(poison, poison + (std::size_t{1} << 22), std::uint16_t{0xffff});
      ws.reset();
      moe::row_matrix<float> y(T, d);
      moe::device::cpu{2}.dispatch(plan, moe::view(x), bank, moe::view(y), ws);
      INFO("d = " << d << ", f = " << f << ", kernel " << static_cast<int>(kernel));
      REQUIRE(y.allFinite());
      CHECK((y - y32).norm() / y32.norm() < 1e-2);
    }
  }
}

}  // namespace
