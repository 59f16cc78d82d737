// SPDX-License-Identifier: Apache-2.0
// No heap allocation per forward after warm-up: the global operator new of this test binary
// counts allocations while `counting` is set.
#include <catch2/catch.hpp>

#include <atomic>
#include <cstdlib>
#include <new>

#include <moe/moe.hpp>

#include "support/devices.hpp"
#include "support/layers.hpp"

namespace {
std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

void* allocate(std::size_t n, std::size_t align) {
  if (counting.load(std::memory_order_relaxed)) allocations.fetch_add(1, std::memory_order_relaxed);
  if (n == 0) n = 1;
  void* p = align <= alignof(std::max_align_t) ? std::malloc(n) : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return allocate(n, alignof(std::max_align_t)); }
void* operator new[](std::size_t n) { return allocate(n, alignof(std::max_align_t)); }
void* operator new(std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return allocate(n, static_cast<std::size_t>(a)); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, alignof(std::max_align_t)); } catch (...) { return nullptr; }
}
void* operator new[](std::size_t n, const std::nothrow_t&) noexcept {
  try { return allocate(n, alignof(std::max_align_t)); } catch (...) { return nullptr; }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace {
using moe::index;

// Forwards `layer` on batches of every size in `sizes` once to warm up, then counts the
// allocations of `repeats` more rounds.
template <class Layer>
long allocations_after_warm_up(Layer& layer, const std::vector<index>& sizes, moe_test::rng& rng, int repeats = 3) {
  const index d = layer.hidden();
  std::vector<moe::row_matrix<float>> xs, ys;
  for (const index T : sizes) {
    xs.push_back(rng.matrix(T, d));
    ys.emplace_back(T, d);
  }
  for (std::size_t i = 0; i < sizes.size(); ++i) layer.forward(xs[i], ys[i]);
  allocations = 0;
  counting = true;
  for (int r = 0; r < repeats; ++r) {
    for (std::size_t i = 0; i < sizes.size(); ++i) layer.forward(xs[i], ys[i]);
  }
  counting = false;
  return allocations.load();
}

TEST_CASE("the counting operator new sees allocations", "[allocation]") {
  allocations = 0;
  counting = true;
  auto* v = new std::vector<int>(100);
  counting = false;
  delete v;
  CHECK(allocations.load() == 2);
}

TEMPLATE_TEST_CASE("a steady-state forward allocates nothing (fp32 and bf16, shared experts, 1 and 2 threads)",
                   "[allocation]", float, moe::bf16) {
  moe_test::rng rng(77);
  const index E = 16, d = 64, f = 48;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto sw = moe_test::random_swiglu(rng, 1, d, 32);
  std::vector<float> gate(static_cast<std::size_t>(d), 0.1f);
  using bank = moe::swiglu_experts<TestType>;
  for (const int threads : {1, 2}) {
    moe::layer<moe::top_k<>, bank, moe::device::cpu> layer(
        moe::top_k<>(rng.matrix(E, d), {.k = 4, .renormalize = true}), bank(w.gate, w.up, w.down),
        moe::shared_experts<bank>(bank(sw.gate, sw.up, sw.down), gate), moe::device::cpu(threads));
    INFO("threads " << threads);
    CHECK(allocations_after_warm_up(layer, {1, 7, 300}, rng) == 0);
  }
}

TEST_CASE("steady-state forwards of wrapped routers allocate nothing", "[allocation]") {
  moe_test::rng rng(78);
  const index E = 8, d = 32, f = 16;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  using bank = moe::swiglu_experts<float>;
  moe::layer<moe::capacity<moe::top_k<>>, bank, moe::device::cpu> cap(
      moe::capacity<moe::top_k<>>(moe::top_k<>(rng.matrix(E, d), {.k = 2}), {.capacity_factor = 1.0}),
      bank(w.gate, w.up, w.down), moe::device::cpu(2));
  CHECK(allocations_after_warm_up(cap, {5, 64}, rng) == 0);
  moe::layer<moe::group_limited<>, bank, moe::device::cpu> grouped(
      moe::group_limited<>(rng.matrix(E, d), {.k = 2, .n_groups = 4, .topk_groups = 2}), bank(w.gate, w.up, w.down),
      moe::device::cpu(2));
  CHECK(allocations_after_warm_up(grouped, {5, 64}, rng) == 0);
}

// Written over the devices (mpi too, under mpirun): a per-token and a whole-batch router, with a
// gated shared expert.
TEMPLATE_LIST_TEST_CASE("a steady-state forward allocates nothing on every device", "[allocation]", moe_test::devices) {
  moe_test::rng rng(79);
  const index E = 16, d = 32, f = 24;
  const auto w = moe_test::random_swiglu(rng, E, d, f);
  const auto sw = moe_test::random_swiglu(rng, 1, d, 16);
  std::vector<float> gate(static_cast<std::size_t>(d), 0.1f);
  using bank = moe::swiglu_experts<float>;
  auto plain = moe_test::make_layer<TestType>(moe::top_k<>(rng.matrix(E, d), {.k = 4, .renormalize = true}), w,
                                              moe::shared_experts<bank>(moe_test::make_bank(sw), gate));
  CHECK(allocations_after_warm_up(plain, {1, 7, 100}, rng) == 0);
  using cap = moe::capacity<moe::top_k<>>;
  auto capped = moe_test::make_layer<TestType>(cap(moe::top_k<>(rng.matrix(E, d), {.k = 2}), {.capacity_factor = 1.0}), w);
  CHECK(allocations_after_warm_up(capped, {5, 64}, rng) == 0);
}

}  // namespace
