# Sourced by the device plans in this folder: `lane GPU STEP...` runs the steps one after another on one GPU of the
# machine, each with its own kernel cache and log (/tmp/sess/lane<GPU>-step<N>.log), noted in /tmp/sess/steps.log.
# Two lanes on one GPU: name them 0 and 0t (a letter after the GPU's number; own cache and logs, the same GPU).
R=/tmp/sess
lane() {
  local lane=$1 n=0; shift
  local gpu=${lane%%[a-z]*}
  for step in "$@"; do
    n=$((n + 1))
    echo "$(date +%T) lane$lane step $n: $step" >> $R/steps.log
    (export CUDA_VISIBLE_DEVICES=$gpu QUANT_KERNEL_CACHE=/tmp/kcache$lane; eval "$step") > $R/lane$lane-step$n.log 2>&1
    local rc=$?  # before `$(date)` below, which would set $? to its own 0
    echo "$(date +%T) lane$lane step $n exit $rc" >> $R/steps.log
  done
}
# `both STEP NAME`: a step on every GPU of the machine (a two-GPU run), its log /tmp/sess/both-<NAME>.log, noted in
# /tmp/sess/steps.log; NCCL's NVLink multicast off (KINDS.md) and a kernel cache of its own.
both() {
  echo "$(date +%T) both: $1" >> $R/steps.log
  (export NCCL_NVLS_ENABLE=0 QUANT_KERNEL_CACHE=/tmp/kcache-both; eval "$1") > $R/both-$2.log 2>&1
  echo "$(date +%T) both: exit $?" >> $R/steps.log
}
