#!/usr/bin/env bash
# Installs the Debian packages tessera builds against, only those that are missing.
# The CUDA Toolkit (nvcc, cuBLAS, cuDNN) is expected under /usr/local/cuda and is optional:
# without it the build is CPU-only.
set -euo pipefail
packages=(cmake ninja-build g++ clang pkg-config libstb-dev doctest-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
          libjpeg62-turbo-dev libssl-dev libcairo2-dev fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
echo "setup: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
