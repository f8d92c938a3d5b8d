"""The HF architectures megatron_solo reads and writes, registered here and nowhere else.

Adding an architecture: one adapter module (subclass :class:`DecoderAdapter`, override what differs)
plus one line in ``DECODERS`` (read and written as the text model of an export) or ``EXPORTERS``,
and its test.
"""

from __future__ import annotations

import os

from megatron_solo.config.model import SoloModelConfig
from megatron_solo.hf.adapters.base import DecoderAdapter, FreshWeights
from megatron_solo.hf.adapters.fuyu import FuyuExport
from megatron_solo.hf.adapters.llama import LlamaAdapter
from megatron_solo.hf.adapters.mistral import MistralAdapter
from megatron_solo.hf.adapters.qwen2 import Qwen2Adapter
from megatron_solo.hf.adapters.qwen3 import Qwen3Adapter
from megatron_solo.hf.adapters.solo_release import SoloReleaseAdapter
from megatron_solo.hf.adapters.unsupported import refuse_unsupported
from megatron_solo.hf.source import ConversionError, HFSource, read_hf_dir

# decoder families, by SoloModelConfig.decoder_family
DECODERS: dict[str, DecoderAdapter] = {
    a.name: a for a in (
        MistralAdapter(),
        LlamaAdapter(),
        Qwen2Adapter(),
        Qwen3Adapter(),
    )
}
# checked in order: the release first (it is a Mistral checkpoint with a patch projection)
IMPORTERS: tuple[DecoderAdapter, ...] = (SoloReleaseAdapter(), *DECODERS.values())
EXPORTERS = {"fuyu": FuyuExport(), "solo": SoloReleaseAdapter()}
FORMATS = tuple(EXPORTERS)


def supported_architectures() -> list[str]:
    """config.json ``architectures`` values some importer reads."""
    return [a for adapter in IMPORTERS for a in adapter.architectures]


def adapter_for(src: HFSource) -> DecoderAdapter:
    """The importer of ``src``; ConversionError naming config.json's field when none reads it."""
    refuse_unsupported(src)
    for adapter in IMPORTERS:
        if adapter.matches(src):
            return adapter
    archs = src.config.get("architectures")
    raise ConversionError(
        f"{src.config_file}: field 'architectures' is {archs!r}; supported: {', '.join(supported_architectures())}"
    )


def open_hf(directory: str | os.PathLike) -> HFSource:
    """Read a HF model directory and check that some adapter imports it."""
    src = read_hf_dir(directory)
    adapter_for(src)
    return src


def decoder_adapter(cfg: SoloModelConfig) -> DecoderAdapter:
    """The adapter of ``cfg``'s decoder family; ConversionError naming the known families."""
    if cfg.decoder_family not in DECODERS:
        raise ConversionError(f"decoder_family {cfg.decoder_family!r} has no adapter; known: {sorted(DECODERS)}")
    return DECODERS[cfg.decoder_family]


def exporter(fmt: str):
    """The export adapter of format ``fmt``; ConversionError naming the known formats."""
    if fmt not in EXPORTERS:
        raise ConversionError(f"unknown export format {fmt!r}; choose one of {FORMATS}")
    return EXPORTERS[fmt]


__all__ = ["DECODERS", "DecoderAdapter", "FORMATS", "FreshWeights", "adapter_for", "decoder_adapter", "exporter",
           "open_hf"]
