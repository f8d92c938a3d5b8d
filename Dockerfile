# megatron_solo on NVIDIA's PyTorch container, which brings CUDA, NCCL, Transformer Engine
# and Apex (the FP8 and fused-kernel paths). Not buildable on the CPU development machine.
FROM nvcr.io/nvidia/pytorch:25.01-py3

WORKDIR /opt/megatron_solo
COPY requirements.txt setup.py pyproject.toml README.md ./
COPY csrc ./csrc
COPY megatron_solo ./megatron_solo
COPY tools ./tools
COPY examples ./examples

# Keep the container's torch, Transformer Engine and Apex; add what megatron_solo needs.
RUN pip install --no-cache-dir "megatron-core==0.16.1" sentencepiece webdataset safetensors psutil tqdm \
        "transformers>=4.46" tensorboard pybind11 \
 && pip install --no-cache-dir --no-build-isolation --no-deps -e .

ENV PYTHONUNBUFFERED=1
CMD ["python", "tools/pretrain.py", "--help"]
