"""Shared pytest settings: quiet megatron-core's start-up warnings, keep threads bounded."""

import os
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "2")
warnings.filterwarnings("ignore", message=".*Transformer Engine.*")
warnings.filterwarnings("ignore", message=".*Apex.*")
