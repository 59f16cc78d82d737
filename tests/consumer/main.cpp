// SPDX-License-Identifier: Apache-2.0
// A consumer of moe: routes 4 tokens through a tiny layer and checks the output is finite.
#include <cmath>
#include <cstdio>

#include <moe/moe.hpp>

int main() {
  const moe::index E = 4, d = 8, f = 4, T = 4;
  moe::row_matrix<float> router_w = moe::row_matrix<float>::Random(E, d);
  moe::row_matrix<float> gate = moe::row_matrix<float>::Random(E * f, d);
  moe::row_matrix<float> up = moe::row_matrix<float>::Random(E * f, d);
  moe::row_matrix<float> down = moe::row_matrix<float>::Random(E * d, f);
  moe::layer<moe::top_k<>, moe::swiglu_experts<float>> layer(
      moe::top_k<>(router_w, {.k = 2, .renormalize = true}), moe::swiglu_experts<float>(moe::view(gate), moe::view(up), moe::view(down)));
  moe::row_matrix<float> x = moe::row_matrix<float>::Random(T, d), y(T, d);
  layer.forward(x, y);
  if (!y.allFinite() || layer.stats().assignments != T * 2) return 1;
  std::printf("moe %s consumer ok\n", moe::version_string);
  return 0;
}
