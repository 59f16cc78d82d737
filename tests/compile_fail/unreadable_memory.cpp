// Compile-fail test: a device whose memory space the layer's host views are not in.
#include <moe/moe.hpp>
struct gpu_memory {
  static constexpr const char* name() noexcept { return "gpu"; }
};
struct gpu_like : moe::device::cpu {
  using device_type = gpu_like;
  using memory_space = gpu_memory;
};
int main() {
  using L = moe::layer<moe::top_k<>, moe::swiglu_experts<float>, gpu_like>;
  return sizeof(L);
}
