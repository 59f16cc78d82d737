// Compile-fail test: a bank that describes weights but has no kernels a host device can drive.
#include <moe/moe.hpp>
struct weights_only {
  moe::index num_experts() const { return 4; }
  moe::index hidden() const { return 8; }
};
int main() {
  using L = moe::layer<moe::top_k<>, weights_only, moe::device::cpu>;
  return sizeof(L);
}
