#!/usr/bin/env bash
# The one-GPU check, as one command on the lent machine (Python 3.12, torch+CUDA, no
# megatron-core, no network). Carry .whl (see benchmarks/gpu/README.md). Writes to $OUT.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, megatron.core; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'megatron-core', megatron.core.__version__)" | tee -a "$OUT/device.txt"
python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1 || echo "csrc build failed (see build.log)"
# The multi-process-free tests on CUDA (NCCL, world size 1).
timeout 200 python3 -m pytest tests -m "not multiprocess" -q -p no:warnings -p no:cacheprovider \
  --junitxml="$OUT/pytest.xml" 2>&1 | tail -n 40 | tee "$OUT/pytest.log"
# Attention check and training-step timing.
timeout 360 python3 benchmarks/gpu/gpu_checks.py --out "$OUT" "$@" 2>&1 | grep -v -i "warn" | tee "$OUT/checks.log"
