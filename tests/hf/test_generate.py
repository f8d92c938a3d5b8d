"""generate picks the prompt template the checkpoint was trained with (solo_export.json); --template overrides it."""

from __future__ import annotations

import json

import pytest
import torch

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
