// Compile-fail test: a type that is not a router gives the concept's message.
#include <moe/moe.hpp>
struct not_a_router {};
int main() {
  using L = moe::layer<not_a_router, moe::swiglu_experts<float>, moe::device::cpu>;
  return sizeof(L);
}
