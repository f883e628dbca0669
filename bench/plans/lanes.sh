# Sourced by the device plans in this folder: `lane GPU STEP...` runs the steps one after another on one GPU of the
# machine, each with its own kernel cache and log (/tmp/sess/lane<GPU>-step<N>.log), noted in /tmp/sess/steps.log.
R=/tmp/sess
lane() {
  local gpu=$1 n=0; shift
  for step in "$@"; do
    n=$((n + 1))
    echo "$(date +%T) lane$gpu step $n: $step" >> $R/steps.log
    (export CUDA_VISIBLE_DEVICES=$gpu QUANT_KERNEL_CACHE=/tmp/kcache$gpu; eval "$step") > $R/lane$gpu-step$n.log 2>&1
    local rc=$?  # before `$(date)` below, which would set $? to its own 0
    echo "$(date +%T) lane$gpu step $n exit $rc" >> $R/steps.log
  done
}
