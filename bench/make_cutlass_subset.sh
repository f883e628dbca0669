#!/usr/bin/env bash
# The CUTLASS headers and Python bindings gptqmodel's Machete kernel (Hopper 4-bit GEMM) builds from, as one tarball
# for the device machine (no network there; gptqmodel would download CUTLASS v4.7.1 from GitHub):
#   bash bench/make_cutlass_subset.sh /work/.mirror/NVIDIA+cutlass/repo .whl/cutlass-subset.tar.gz
# MIRROR is a git directory of NVIDIA/cutlass (the `fetch` tool's snapshot: main of 2026-08-20, six commits after
# v4.7.0; v4.7.1 is not in it). gptqmodel 7.6 accepts only a checkout whose version.h says 4.7.1, so the copy's
# CUTLASS_PATCH is set to 1: a measurement of Machete on main-after-4.7.0, not of the 4.7.1 release.
# On the device: mkdir -p /tmp/cutlass && tar xzf .whl/cutlass-subset.tar.gz -C /tmp/cutlass,
# then GPTQMODEL_CUTLASS_DIR=/tmp/cutlass.
set -euo pipefail
mirror=$1
out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git --git-dir="$mirror" archive HEAD include tools/library/include tools/util/include python/cutlass_library \
  | tar -x -C "$work"
git --git-dir="$mirror" show HEAD:LICENSE.txt > "$work/LICENSE.txt"
git --git-dir="$mirror" log -1 --format='CUTLASS %H (%cd), version.h patch set to 1 for gptqmodel' > "$work/SOURCE.txt"
sed -i 's/^#define CUTLASS_PATCH 0$/#define CUTLASS_PATCH 1/' "$work/include/cutlass/version.h"
grep -q '^#define CUTLASS_PATCH 1$' "$work/include/cutlass/version.h"
tar czf "$out" -C "$work" .
echo "$out: $(du -h "$out" | cut -f1)"
