#!/usr/bin/env bash
# Pieces of the small-batch study on one GPU, many runs at once, stopped after a time limit; the
# finished runs (result.json, metrics.jsonl, train.log; no checkpoints) come back as one archive.
#   bash benchmarks/cuda_study.sh OUT_DIR SECONDS [batch_size_study.py options...]
#   tar xzf OUT_DIR/study_runs.tgz -C runs/batch_size_study   # then: batch_size_study.py ... --report
# Expects a Python with torch (CUDA) and segkn's dependencies; segkn itself from this checkout.
# The runs are small (64 x 64 images, batch 1-8), so a GPU spends its time waiting for kernel
# launches: CUDA MPS, where the machine has it, lets the processes' kernels run side by side.
set -uo pipefail
out=${1:?usage: cuda_study.sh OUT_DIR SECONDS [batch_size_study.py options]}
seconds=${2:?usage: cuda_study.sh OUT_DIR SECONDS [batch_size_study.py options]}
shift 2
mkdir -p "$out"
work=${SEGKN_STUDY_DIR:-/tmp/segkn_study}
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
mps=0
probe="import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), torch.ones(1, device='cuda').item())"
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d; then
  if timeout 60 python3 -c "$probe"; then
    mps=1
    echo "CUDA MPS on"
  else
    echo quit | nvidia-cuda-mps-control
    echo "CUDA MPS did not start a client: running without it"
  fi
else
  echo "no CUDA MPS: the processes share the GPU by time slices"
fi
(while sleep 30; do
  echo "$(date +%T) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader) load $(cut -d' ' -f1 /proc/loadavg)"
done) >"$out/gpu_use.log" 2>&1 &
monitor=$!
# the study and its worker processes in a process group of their own, so that the time limit ends them
# all: SIGTERM first (each run saves its last.pth, a rerun resumes it), SIGKILL 20 s later
setsid python3 benchmarks/batch_size_study.py --work-dir "$work" --json "$out/study.json" "$@" \
  >"$out/study.log" 2>&1 &
study=$!
end=$((SECONDS + seconds))
while kill -0 "$study" 2>/dev/null && ((SECONDS < end)); do sleep 2; done
status=0
if kill -0 "$study" 2>/dev/null; then
  status=124
  kill -TERM -- -"$study" 2>/dev/null
  for _ in $(seq 20); do pgrep -g "$study" >/dev/null || break; sleep 1; done
  kill -KILL -- -"$study" 2>/dev/null
else
  wait "$study"
  status=$?
fi
kill "$monitor" 2>/dev/null
((mps)) && echo quit | nvidia-cuda-mps-control
grep -E '^\[[0-9]+/[0-9]+\]' "$out/study.log" | tail -n 40
echo "study exit status $status (124: stopped at the time limit; finished runs are kept)"
tar czf "$out/study_runs.tgz" -C "$work" --exclude='*.pth' --exclude=tensorboard --exclude=vis .
echo "finished runs: $(find "$work" -name result.json | wc -l)"
