#!/usr/bin/env bash
# The GPU check of moe::device::cuda, prepared for one H200 (or any sm_80 / sm_90 GPU), sized to
# finish in under 6 minutes: builds out of tree, runs every CUDA test and the benchmark, and writes
# bench/results/<date>-gpu.md.
#
#   bash bench/gpu/run.sh            (BUILD_DIR=build/gpu by default; JOBS=$(nproc))
#
# STATUS: prepared, NOT RUN YET. It was written on a machine without a GPU; no result under
# bench/results/ comes from it until someone runs it on a GPU and commits the file it writes.
#
# What it checks (docs/architecture.md §5.5):
#   - the routing kernel's expert ids and weights equal the CPU routers' (moe::top_k softmax and
#     sigmoid with bias, moe::group_limited, moe::null_experts, E = 1024 / k = 32) bit for bit on
#     10^6 random rows (10^5 for the wide cases) with exact ties, ±inf and NaN rows;
#   - the GPU counting sort equals the stable sort by expert;
#   - the layer (fp32, bf16, fp16 experts) against the CPU layer: NMSE <= 1e-6 / 5e-4 / 1e-4,
#     deterministic (two runs, same bits) and batch invariant (100 tokens alone = in a batch);
#   - the bf16 layer at the OLMoE shape, T = 4096, against cuBLAS dense GEMMs of the same FLOPs,
#     with its NMSE against the CPU layer.
set -uo pipefail
cd "$(dirname "$0")/../.."
build="${BUILD_DIR:-build/gpu}"
jobs="${JOBS:-$(nproc)}"
mkdir -p bench/results
out="bench/results/$(date -u +%Y-%m-%d)-gpu.md"
log="$build/run.log"
start=$(date +%s)

# The build machine may have no network: dependencies must already be installed (the project's
# image has them); install_deps.sh is tried and its failure ignored.
bash scripts/install_deps.sh >/dev/null 2>&1 || true
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOE_ENABLE_CUDA=ON -DMOE_BUILD_TESTS=ON -DMOE_BUILD_BENCHMARKS=ON \
  -DMOE_BUILD_EXAMPLES=OFF -DMOE_ENABLE_MPI=OFF >"$build.configure.log" 2>&1 || { cat "$build.configure.log"; exit 1; }
mkdir -p "$build"
cmake --build "$build" --target moe_cuda_tests moe_cuda_bench -j "$jobs" >"$log" 2>&1 || { tail -50 "$log"; exit 1; }

gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
{
  echo "# moe::device::cuda on a GPU, $(date -u +%Y-%m-%d)"
  echo
  echo "GPU: ${gpu:-unknown}; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); written by bench/gpu/run.sh."
  echo
  echo "## Tests (moe_cuda_tests --rows 1000000)"
  echo
  echo "| result | check | detail |"
  echo "|---|---|---|"
} >"$out"
timeout 240 "$build/tests/cuda/moe_cuda_tests" --rows 1000000 --summary "$out"
tests_rc=$?
echo >>"$out"
[ "$tests_rc" -eq 77 ] && echo "No GPU visible: the tests were skipped." >>"$out"
[ "$tests_rc" -eq 124 ] && echo "The tests ran past 240 s and were stopped." >>"$out"
timeout 150 "$build/bench/gpu/moe_cuda_bench" 4096 >>"$out"
bench_rc=$?
echo >>"$out"
echo "Exit codes: tests $tests_rc, benchmark $bench_rc (0 = pass, 77 = no GPU); $(( $(date +%s) - start )) s in all." >>"$out"
cat "$out"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
