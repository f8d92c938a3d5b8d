"""Install megatron_solo and build its C++ extension (csrc/, pybind11)."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext = Pybind11Extension(
    "megatron_solo._csrc",
    sorted(glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(
    name="megatron_solo",
    version="0.1.0",
    description="Train SOLO (a single-transformer vision-language model) on megatron-core",
    packages=find_packages(include=["megatron_solo", "megatron_solo.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.10",
    setup_requires=["pybind11>=2.12"],
    install_requires=[
        "torch>=2.6",
        "megatron-core==0.16.1",
        "numpy",
        "pillow>=10",
        "sentencepiece",
        # sentencepiece's model protobuf (sentencepiece_model_pb2: reading a tokenizer.model's pieces);
        # sentencepiece itself does not require it
        "protobuf",
        "webdataset>=0.2",
        "tensorboard",
        "matplotlib",  # loss_curve.png
        # 4.57.6 and 5.24.0 verified (export, processor, generate); older 4.x Fuyu needs other inputs
        "transformers>=4.57",
        "safetensors",
        "psutil",
        "tqdm",
        "pybind11>=2.12",
        # parquet / Arrow / saved datasets folders as preprocessing sources (data/tables.py)
        "pyarrow",
    ],
    extras_require={
        "te": ["transformer-engine[pytorch]"],
        # datasets prepared with `energon prepare` as a preprocessing source (data/energon_source.py)
        "energon": ["megatron-energon"],
        # Weights & Biases experiment tracking (pretrain --wandb-project)
        "wandb": ["wandb"],
        # Mistral's tokenizer.model, the tokenizer used when none is given (vocab.default_tokenizer_path)
        "mistral": ["mistral-common"],
        # the logistic-regression pixel baseline (evaluate --baseline-train) and the digits demo data
        "sklearn": ["scikit-learn"],
        # benchmark files as parquet / Arrow / saved datasets folders (evaluate --benchmark)
        "bench": ["pyarrow"],
        # lmms-eval with the solo model (python -m megatron_solo.evaluation.lmms); it pulls a newer torch than
        # the pinned one: install it with its own torch or in its own venv (.ci/run does)
        "lmms": ["lmms-eval==0.7.*", "pyyaml"],  # pyyaml: the launcher reads lmms-eval's --config runs file
        "test": ["pytest", "ruff", "mistral-common", "scikit-image", "scikit-learn", "pyarrow"],
    },
)
