# SPDX-License-Identifier: Apache-2.0
# Helpers for moe's own targets (tests, benchmarks, examples). Nothing here reaches consumers.

# ISA and warning flags for moe's own executables.
function(moe_target_defaults target)
  if(MOE_TARGET_ARCH)
    target_compile_options(${target} PRIVATE -march=${MOE_TARGET_ARCH})
  endif()
  # g++ 12 warns falsely inside its own AVX-512 headers ((maybe-)uninitialized) with xsimd.
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-maybe-uninitialized -Wno-uninitialized)
endfunction()

# A benchmark executable: always optimised, whatever the build type.
function(moe_add_benchmark target)
  add_executable(${target} ${ARGN})
  target_link_libraries(${target} PRIVATE moe::moe benchmark::benchmark)
  moe_target_defaults(${target})
  target_compile_options(${target} PRIVATE -O3)
  target_compile_definitions(${target} PRIVATE NDEBUG)
endfunction()
