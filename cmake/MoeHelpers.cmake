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

# An executable with CUDA sources (MOE_ENABLE_CUDA): C++20 for both languages (-std=c++20 for nvcc), host flags for the
# host compiler's sources only (nvcc takes no -march), nvcc's own flags for the .cu files.
function(moe_cuda_target_defaults target)
  # (CMake 3.25 has no CUDA20 dialect flags for nvcc: the flag is given directly.)
  if(MOE_TARGET_ARCH)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=${MOE_TARGET_ARCH}>)
  endif()
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-maybe-uninitialized -Wno-uninitialized>
    $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20 --expt-relaxed-constexpr -Xcompiler=-Wall>)
endfunction()
