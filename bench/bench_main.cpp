// SPDX-License-Identifier: Apache-2.0
// Shared main of moe's benchmarks: records the build's SIMD arch and the thread count in the
// JSON context, so that recorded runs can be compared.
#include <benchmark/benchmark.h>

#include <string>

#include <omp.h>
#include <xsimd/xsimd.hpp>

#include <moe/kernels/dispatch.hpp>
#include <moe/version.hpp>

int main(int argc, char** argv) {
  benchmark::AddCustomContext("moe.version", moe::version_string);
  benchmark::AddCustomContext("moe.simd_arch", xsimd::default_arch::name());
  benchmark::AddCustomContext("moe.threads", std::to_string(omp_get_max_threads()));
  benchmark::AddCustomContext("moe.gating_isa", moe::kernels::active_gating().name);
  const auto isas = moe::kernels::runnable_gating_tables();
  for (std::size_t i = 0; i < isas.size(); ++i) {
    benchmark::AddCustomContext("moe.isa." + std::to_string(i), isas[i].name);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
