#!/usr/bin/env bash
# Builds and runs the OLMoE-shaped demo (examples/01_olmoe_demo): dependencies, configure, build, run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install_deps.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
cmake --build build/release --target olmoe_demo -j "$(nproc)"
OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}" ./build/release/examples/01_olmoe_demo/olmoe_demo
