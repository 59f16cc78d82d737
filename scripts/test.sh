#!/usr/bin/env bash
# Builds and runs moe's whole test suite through ctest: dependencies, configure, build, test.
#   bash scripts/test.sh          release build (tests, examples, benchmarks, consumers)
#   bash scripts/test.sh asan     the same tests under AddressSanitizer + UndefinedBehaviorSanitizer
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
config="${1:-release}"
case "$config" in
  release) opts=(-DCMAKE_BUILD_TYPE=Release) ;;
  # (The MPI tests run in the release configuration: Open MPI's own allocations trip the leak checker.
  # The CUDA device's kernel logic runs on the host in moe_tests here too; nvcc's compile of the GPU
  # tests, which a CPU machine skips, is the release configuration's.)
  asan) opts=(-DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_BUILD_EXAMPLES=OFF -DMOE_BUILD_BENCHMARKS=OFF -DMOE_ENABLE_MPI=OFF -DMOE_ENABLE_CUDA=OFF) ;;
  *) echo "usage: $0 [release|asan]" >&2; exit 2 ;;
esac
cmake -S . -B "build/$config" "${opts[@]}" -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build "build/$config" -j "$(nproc)"
# Any sanitizer report fails the run (and the leak checker is on).
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
ctest --test-dir "build/$config" --output-on-failure -j "$(nproc)"
