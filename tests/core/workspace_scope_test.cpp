// SPDX-License-Identifier: Apache-2.0
// Tests of moe::workspace::mark / rewind (include/moe/core/workspace.hpp).
#include <catch2/catch.hpp>

#include <moe/core/workspace.hpp>

namespace {  // test cases live in an anonymous namespace so `index` is moe::index

TEST_CASE("workspace: rewind releases the buffers taken since mark, the peak still counts them", "[core][workspace]") {
  moe::workspace ws;
  ws.reset();
  float* keep = ws.take<float>(100);
  keep[0] = 1.5f;
  const auto m = ws.mark();
  for (int i = 0; i < 10; ++i) {
    float* scratch = ws.take<float>(1000);  // first pass: overflow blocks
    scratch[999] = 2.0f;
    ws.rewind(m);
  }
  CHECK(keep[0] == 1.5f);
  ws.reset();  // one block of the peak: 100 + 1000 floats (rounded), not 100 + 10 · 1000
  const std::size_t cap = ws.capacity();
  CHECK(cap >= 1100 * sizeof(float));
  CHECK(cap < 3000 * sizeof(float));
  float* a = ws.take<float>(100);
  const auto m2 = ws.mark();
  float* b = ws.take<float>(1000);
  ws.rewind(m2);
  float* c = ws.take<float>(1000);
  CHECK(b == c);  // the same memory again, inside the main block
  CHECK(a != b);
  ws.reset();
  CHECK(ws.capacity() == cap);  // steady state: nothing new
}

}  // namespace
