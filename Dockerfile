# megatron_solo on NVIDIA's PyTorch container, which brings CUDA, cuDNN, NCCL, Transformer Engine
# and Apex (the thd packed-attention, FP8 and fused-kernel paths).
#
# Base release: megatron-core 0.16.1 pins Transformer Engine >=2.9,<2.12 (its METADATA:
# transformer-engine[core_cu13,pytorch]>=2.9.0a0,<2.12.0). 25.11 is chosen because it is reported
# to ship TE 2.9 (with PyTorch 2.10 and CUDA 13.0); the previous base, 25.01, is ten months older
# than TE 2.9. That report comes from users' notes, not from NVIDIA's release notes, so the check
# below fails the build if the image's TE is outside the range, rather than letting a mismatched TE
# fail at the first training step. If it fails, pin TE instead (it builds transformer_engine_torch
# against the container's torch; the image has the CUDA toolkit for it):
#   RUN pip install --no-cache-dir --no-build-isolation "transformer-engine[pytorch]==2.11.0"
FROM nvcr.io/nvidia/pytorch:25.11-py3

RUN python -c "from importlib.metadata import version; from packaging.version import Version as V; \
v = V(version('transformer-engine')); print('Transformer Engine', v); \
assert V('2.9.0a0') <= v < V('2.12'), f'Transformer Engine {v} is outside megatron-core 0.16.1 range >=2.9,<2.12'"

WORKDIR /opt/megatron_solo
COPY requirements.txt setup.py pyproject.toml README.md ./
COPY csrc ./csrc
COPY megatron_solo ./megatron_solo
COPY tools ./tools
COPY examples ./examples

# Keep the container's torch, Transformer Engine and Apex (they satisfy setup.py's floors); add what
# megatron_solo needs, as setup.py states it (its one list of requirements).
RUN pip install --no-cache-dir -e ".[mistral]"

ENV PYTHONUNBUFFERED=1
CMD ["python", "tools/pretrain.py", "--help"]
