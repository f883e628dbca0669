#!/usr/bin/env bash
# Eighth session, fourth call, ONE H200: start-up with every package's bytecode compiled, as a pip install leaves it.
# This machine sets PYTHONDONTWRITEBYTECODE=1 and its torch has no __pycache__, so each start compiled torch's
# sources (and /tmp/site's: installed with --no-compile): the third call's import (13 s) measured that, not our code.
#   bash bench/device_session.sh start "bash bench/plans/2026-12-01i-h200.sh"
source "$(dirname "$0")/lanes.sh"
out=$R/results
mkdir -p $out
lane 0 \
  "(time python3 -m compileall -q -j 16 /tmp/site \$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))') > /dev/null) > $out/bytecode-all.txt 2>&1" \
  "timeout 240 python3 bench/startup.py --shape 8b --modes bf16 --warm-starts 1 --device-map cuda:0 --work /tmp/bench0 --out $out --tag=-bytecode-all"
