#!/usr/bin/env bash
# The GPU checks in one go: the CUDA tests, then the layer and model benchmarks on the GPU.
#   bash benchmarks/cuda_check.sh OUT_DIR [full|tests]
# Expects a Python with torch (CUDA) and segkn's dependencies; segkn itself from this checkout.
set -uo pipefail
out=${1:?usage: cuda_check.sh OUT_DIR [full|tests]}
what=${2:-full}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
status=0
timeout 330 python3 -m pytest -q -s -ra tests/test_cuda.py -p no:cacheprovider 2>&1 | tee "$out/pytest_cuda.log" || status=1
if [ "$what" = full ]; then
  timeout 90 python3 benchmarks/kn_layer.py --device cuda --batch 2 --repeats 10 --json "$out/kn_layer_cuda.json" \
    2>&1 | tee "$out/kn_layer_cuda.log" || status=1
  timeout 150 python3 benchmarks/kn_model.py --device cuda --size 512 1024 --batch 2 --repeats 10 \
    --json "$out/kn_model_cuda.json" 2>&1 | tee "$out/kn_model_cuda.log" || status=1
fi
# torch.compile (the default for CUDA training) on the smallest model pair, train step only
timeout 240 python3 benchmarks/kn_model.py --device cuda --size 512 1024 --batch 2 --repeats 10 --compile \
  --cases a b --only deeplabv3/knresnet18 --modes train --no-memory --json "$out/kn_model_compile_cuda.json" \
  2>&1 | tee "$out/kn_model_compile_cuda.log" || status=1
exit $status
