#!/usr/bin/env bash
# Install what the app needs (`bash scripts/setup.sh`) or the app and its tests (`bash scripts/setup.sh test`)
# on a Debian/Ubuntu machine. README.md, .ci/run and the Dockerfile all install through this one script.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-app}

system_packages=(libpcre2-dev)            # pypcre (a gptqmodel dependency) compiles against PCRE2
[ "$target" = test ] && system_packages+=(chromium fonts-noto-cjk)   # real-browser tests (Korean glyphs too)
missing=()
for package in "${system_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# One resolver run over everything the target needs, held to the exact set CI tests (constraints.txt says why).
requirements=(-r requirements.txt)
[ "$target" = test ] && requirements+=(-r requirements-dev.txt)
# DISABLE_CUDA=1: hqq's setup.py otherwise tries to build its optional CUDA kernel (hqq_aten, unused here) with
# whatever nvcc and torch it finds, while pip builds it.
DISABLE_CUDA=1 python3 -m pip install -q "${requirements[@]}" -c constraints.txt
echo "setup ($target) done"
