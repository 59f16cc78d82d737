#!/usr/bin/env bash
# Builds the libFuzzer targets (fuzz/) of the checkpoint readers with clang (ASan + UBSan) and runs each
# for a bounded number of executions from the seed corpus; any crash, sanitizer report or
# exception other than moe::error fails. Prints each target's execution count.
#   bash scripts/fuzz.sh [runs]     (default 1000000 executions per target)
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-1000000}"
export DEBIAN_FRONTEND=noninteractive
if ! command -v clang++ >/dev/null; then
  echo "moe: installing clang"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends clang
fi
# libFuzzer's runtime is its own package (libclang-rt-<major>-dev) in Debian 12.
if ! clang++ -print-file-name=libclang_rt.fuzzer-x86_64.a | grep -q /; then
  major=$(clang++ -dumpversion | cut -d. -f1)
  echo "moe: installing libclang-rt-$major-dev"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "libclang-rt-$major-dev"
fi
bash scripts/install_deps.sh
out=build/fuzz
mkdir -p "$out"
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -Iinclude -I/usr/include/eigen3)
# The seed corpus is checked in (fuzz/corpus/, written by fuzz/make_corpus.cpp).
for target in gguf safetensors; do
  clang++ "${flags[@]}" "fuzz/${target}_fuzz.cpp" -o "$out/${target}_fuzz"
  mkdir -p "$out/work_$target"
  log="$out/${target}.log"
  if ! "$out/${target}_fuzz" -runs="$runs" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
       "$out/work_$target" "fuzz/corpus/$target" >"$log" 2>&1; then
    tail -50 "$log"
    echo "moe: fuzz target $target failed" >&2
    exit 1
  fi
  done_line=$(grep -E "^#[0-9]+.*DONE" "$log" | tail -1 || true)
  echo "moe: fuzz $target: ${done_line:-$(tail -1 "$log")}"
done
