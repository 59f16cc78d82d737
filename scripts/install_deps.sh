#!/usr/bin/env bash
# Installs moe's build dependencies from Debian 12 when they are missing (run as root).
set -euo pipefail
packages=(cmake g++ make libeigen3-dev libxsimd-dev xtl-dev catch2 libbenchmark-dev ccache libopenmpi-dev openmpi-bin nlohmann-json3-dev libcli11-dev chromium)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "moe: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
