"""The options of the tools whose library calls take plain arguments: HF import, export, generation, demo data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from megatron_solo.config.choices import check_choices
from megatron_solo.config.cli import cli, positive_int
from megatron_solo.config.parallel import ParallelConfig

# ParallelConfig fields a conversion does not take: it writes or reads weights, it does not train
TRAINING_LAYOUT = ("parallel.virtual_pipeline", "parallel.sequence_parallel", "parallel.use_distributed_optimizer")


@dataclass
class ImportOptions:
    """tools/convert_hf_to_megatron.py: a HF model (or the SOLO-7B release) into a Megatron checkpoint."""

    hf: str  # HF model directory (config.json + safetensors)
    out: str  # output save root (checkpoint, solo_model.json, tokenizer/)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)  # the written checkpoint's layout
    tokenizer: str | None = None  # tokenizer.model or HF tokenizer dir when --hf has none
    # --no-chat-tokens: do not add <|im_start|>/<|im_end|>
    chat_tokens: bool = field(default=True, metadata=cli("--no-chat-tokens"))
    close_with_vision: bool = False  # the SOLO release's SFT image-close quirk
    init_std: float = 0.02  # std of new embedding rows and the projection
    seed: int = 1234  # draws of the new embedding rows and the projection


@dataclass
class ExportOptions:
    """tools/export_to_hf.py: a Megatron checkpoint (any TP/PP) as a stock-transformers model."""

    checkpoint: str  # save root (with latest file) or one iter_N directory
    # output directory: a new folder, or a previous export (replaced once the new one is complete)
    out: str
    format: str = "fuyu"  # fuyu: a stock-transformers FuyuForCausalLM; solo: the SOLO release's own format
    model_config: str | None = None  # solo_model.json of the checkpoint (default: ROOT/solo_model.json)
    tokenizer: str | None = None  # tokenizer directory (default: ROOT/tokenizer)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # cast weights (default: as stored)
    max_shard_mb: int = 512  # largest safetensors file written

    def __post_init__(self) -> None:
        check_choices(self)


@dataclass
class GenerateOptions:
    """tools/generate.py: a prompt about images, answered greedily by an exported model."""

    model: str  # exported model directory (Fuyu format)
    prompt: str  # the question, or the start of the text the model continues
    image: list[str] = field(default_factory=list, metadata=cli(repeat=True))  # image file (repeatable)
    # prompt template (default: the one the model was trained with, from solo_export.json)
    template: str | None = field(default=None, metadata=cli(shortcuts={"--plain": "plain"}))
    max_new_tokens: int = 64  # the answer's largest length in tokens


@dataclass
class DemoDataOptions:
    """tools/make_demo_data.py: the quick start's raw sources, from packages installed here."""

    out: str  # folder for digits/, digit_names.json, imagenet/, class_names.json, text.jsonl
    text_limit: int | None = field(default=None, metadata=cli(parse=positive_int))  # at most this many text documents
    # also this many generated training scenes (scenes/: captions, VQA, conversations; 200 held-out questions)
    scenes: int = field(default=0, metadata=cli(parse=positive_int))
    blank_images: bool = False  # every image written is its background only: the no-image baseline's data
