#!/usr/bin/env bash
# Run GPU work as one detached job that outlives a single device `run` call (10 min each), and collect it.
#
#   run 1:  bash bench/device_session.sh start "python bench/gpu_cycles.py --out /tmp/sess" "python -m pytest tests/gpu -q -n 0"
#           (starts the steps one after another in the background, then waits like `wait`)
#   run 2+: bash bench/device_session.sh wait 480      # waits up to 480 s more, copies /tmp/sess to $OUT (call timeout_s 560)
#
# Call again within the machine's idle release (30 s) or the machine, and the job, are gone. Results and one log per
# step are in /tmp/sess (steps.log says when each started); `wait` packs them into $OUT/sess.tgz.
# Keep everything the job writes outside the repo (kernel cache in /tmp/kcache): each `run` call re-syncs the
# working tree, and an ignored folder in it (.kcache) vanished mid-build at the next call (session 7: Marlin's JIT).
set -u
R=/tmp/sess
collect() {
  for _ in $(seq "$1"); do [ -f $R/done ] && break; sleep 1; done
  cat $R/steps.log
  tar czf "${OUT:-/tmp}/sess.tgz" -C /tmp sess
}
case "${1:-}" in
  start)
    shift
    if [ ! -d $R ]; then
      mkdir -p $R
      (ls /tmp/site/gptqmodel >/dev/null 2>&1 || bash .whl/device-setup.sh) > $R/setup.log 2>&1
      # The machine sets PYTHONDONTWRITEBYTECODE=1, its torch has no __pycache__ and the wheels above are installed
      # with --no-compile: without this every process compiled torch's and transformers' sources again (import 13 s
      # instead of 6 s, bench/results/startup-8b-cuda-bytecode*.md). A pip install leaves the bytecode compiled.
      python3 -m compileall -q -j 16 /tmp/site "$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')" \
        > $R/bytecode.log 2>&1
      export PYTHONPATH=/tmp/site:$PWD GPTQMODEL_CPU_WORKERS=8 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
        QUANT_KERNEL_CACHE=/tmp/kcache MAX_JOBS=16
      n=0
      script=""
      for step in "$@"; do
        n=$((n + 1))
        # Each step in a subshell that starts in the repo root: a `cd` in one step must not move the next (a step
        # that ran `cd .whl/before` once made the following steps measure the old tree).
        script+="echo \"\$(date +%T) step $n: ${step//\"/\\\"}\" >> $R/steps.log; (cd '$PWD' && ${step}) > $R/step$n.log 2>&1; "
      done
      setsid nohup bash -c "${script} echo \"\$(date +%T) done\" >> $R/steps.log; touch $R/done" \
        > /dev/null 2>&1 < /dev/null &
    fi
    collect 480 ;;  # returns (with the tar) inside a 560 s call: the fourth session cut at 560 s got nothing back
  wait) collect "${2:-480}" ;;
  *) echo "usage: $0 start STEP... | wait [SECONDS]" >&2; exit 2 ;;
esac
