// SPDX-License-Identifier: Apache-2.0
// The README's usage example, compiled and run (the ctest readme_example_is_compiled checks that
// README.md shows exactly this code).
#include <catch2/catch.hpp>

#include <iostream>

#include <moe/moe.hpp>

TEST_CASE("README usage example compiles and runs", "[readme]") {
  std::srand(1);
  // example-begin readme
  // An OLMoE-style layer: softmax top-8 over 64 SwiGLU experts, on CPU threads.
  const moe::index d = 64, f = 32, T = 16;  // OLMoE: d = 2048, f = 1024
  using router = moe::top_k<moe::softmax_gate>;
  using experts = moe::swiglu_experts<float>;
  moe::row_matrix<float> router_w = moe::row_matrix<float>::Random(64, d);    // [E × d]
  moe::row_matrix<float> gate_w = moe::row_matrix<float>::Random(64 * f, d);  // [E·f × d]
  moe::row_matrix<float> up_w = moe::row_matrix<float>::Random(64 * f, d);    // [E·f × d]
  moe::row_matrix<float> down_w = moe::row_matrix<float>::Random(64 * d, f);  // [E·d × f]
  moe::layer<router, experts, moe::device::cpu> olmoe{
      router{router_w, {.k = 8, .renormalize = false}},
      experts{gate_w, up_w, down_w}};

  moe::row_matrix<float> x = moe::row_matrix<float>::Random(T, d), y(T, d);  // [T × d]
  olmoe.forward(x, y);                           // y = Σ_slots weight · Expert(x)
  const moe::routing_plan& plan = olmoe.plan();  // plan.expert(t, s), plan.weight(t, s)
  std::cout << olmoe.stats();                    // load per expert, experts/token, entropy
  // example-end readme
  CHECK(plan.num_tokens() == T);
  CHECK(plan.active_slots(0) == 8);
  CHECK(y.allFinite());
  CHECK(olmoe.stats().assignments == 8 * T);
}
