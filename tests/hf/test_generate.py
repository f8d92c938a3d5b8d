"""generate picks the prompt template the checkpoint was trained with (solo_export.json); --template overrides it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import tools.generate as generate_tool
from megatron_solo.hf.generate import export_template, generate
from megatron_solo.hf.source import ConversionError


def _export_dir(tmp_path, **meta):
    d = tmp_path / "export"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text("{}")
    (d / "solo_export.json").write_text(json.dumps({"format": "fuyu", **meta}))
    return d


class _SpyProcessor:
    """Records the template it was asked for; stands in for SoloProcessor."""

    class tokenizer:  # noqa: N801 - the attribute name SoloProcessor has
        eos_id, pad_id = 2, 2

    def __init__(self):
        self.chat = []

    def __call__(self, prompt, images=None, chat=False):
        self.chat.append(chat)
        return {"input_ids": torch.tensor([[1, 5, 6]])}

    def decode(self, ids):
        return " ".join(str(int(i)) for i in ids)


class _EchoModel:
    config = SimpleNamespace(text_config=SimpleNamespace(max_position_embeddings=80))

    def generate(self, input_ids, **kwargs):
        return torch.cat([input_ids, torch.tensor([[7, 8]])], dim=1)


@pytest.mark.parametrize("recorded,expect", [({"template": "chat"}, True), ({"template": "plain"}, False),
                                             ({}, False)])
def test_generate_uses_the_recorded_template(tmp_path, recorded, expect):
    d = _export_dir(tmp_path, **recorded)
    spy = _SpyProcessor()
    assert generate(d, "hi", loaded=(_EchoModel(), spy)) == "7 8"
    assert generate(d, "hi", chat=not expect, loaded=(_EchoModel(), spy)) == "7 8"  # an explicit choice wins
    assert spy.chat == [expect, not expect]


def test_export_metadata_is_checked(tmp_path):
    assert export_template(_export_dir(tmp_path, template="chat")) == "chat"
    with pytest.raises(ConversionError, match="field 'template' = 'alpaca'"):
        export_template(_export_dir(tmp_path, template="alpaca"))
    with pytest.raises(ConversionError, match="exported as 'solo'; generation needs --format fuyu"):
        export_template(_export_dir(tmp_path, format="solo"))
    (tmp_path / "export" / "solo_export.json").unlink()
    with pytest.raises(ConversionError, match="not a model written by tools/export_to_hf.py"):
        export_template(tmp_path / "export")


@pytest.mark.parametrize("argv,chat", [([], None), (["--template", "chat"], True), (["--template", "plain"], False),
                                       (["--plain"], False)])
def test_tool_template_flag(monkeypatch, capsys, argv, chat):
    seen = {}

    def fake(model, prompt, images, *, chat, max_new_tokens):
        seen["chat"] = chat
        return "answer"

    monkeypatch.setattr(generate_tool, "generate", fake)
    assert generate_tool.main(["--model", "m", "--prompt", "p", *argv]) == 0
    assert seen["chat"] is chat and capsys.readouterr().out == "answer\n"


def test_bad_images_too_long_prompts_and_no_new_tokens_are_one_line_errors(tmp_path):
    from megatron_solo.hf.processor import SoloProcessor
    from megatron_solo.vocab import SoloTokenizer

    d = _export_dir(tmp_path, template="plain")
    real = (_EchoModel(), SoloProcessor(SoloTokenizer()))
    (tmp_path / "x.jpg").write_bytes(b"%PDF-1.4 not an image")
    png = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(png)
    png.write_bytes(png.read_bytes()[:60])
    for bad in (tmp_path / "x.jpg", png):
        with pytest.raises(ConversionError, match=f"image .*{bad.name}.*corrupt_image"):
            generate(d, "hi", [str(bad)], loaded=real)
    generate(d, "word " * 10, loaded=real)  # fits: 12 tokens and 64 new ones in 80 positions
    with pytest.raises(ConversionError, match=r"the prompt is \d+ tokens .* and 64 new .* the model's 80 positions"):
        generate(d, "word " * 20, loaded=real)
    with pytest.raises(ConversionError, match="max_new_tokens must be at least 1"):
        generate(d, "hi", max_new_tokens=0, loaded=real)
