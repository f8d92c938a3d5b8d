"""lmms-eval's ``solo`` model: our HF export (or a Megatron checkpoint through our backend) inside lmms-eval.

lmms-eval's stock ``fuyu`` model cannot read a SOLO export: its image processor cuts 30x30 patches,
pads to 1080x1920, normalises with mean/std 0.5 and lays rows out with Fuyu's ``|NEWLINE|``, and its
log-likelihood returns a loss over every label. This model hands each request to the evaluation core
both of our backends share, so images get SOLO's resize, ImageNet normalisation and
``<vision> .. <vrow_sep> .. </vision>`` layout, prompts the model's template (plain or [INST] chat):

- ``generate_until``: greedy, at most ``max_new_tokens`` (the task's, else 32), cut at the task's
  ``until`` strings;
- ``loglikelihood``: the summed log-probability of the continuation's tokens after the context and its
  images, and whether greedy decoding would have produced exactly those tokens.

Imported by :mod:`.lmms` (the launcher), which registers it: lmms-eval is an optional extra.
"""

from __future__ import annotations

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from megatron_solo.config.job import CHAT_TEMPLATE
from megatron_solo.evaluation.documents import continuation_doc, prompt_doc
from megatron_solo.evaluation.scoring import generate_documents, score_documents
from megatron_solo.evaluation.tasks import encode_image_prompt

DEFAULT_MAX_NEW_TOKENS = 32


def _backend(pretrained: str | None, checkpoint: str | None, dtype: str, max_side: int | None):
    from megatron_solo.evaluation.lmms import check_solo_model
    from megatron_solo.evaluation.run import DTYPES

    check_solo_model(pretrained, checkpoint, dtype)
    max_side = int(max_side) if max_side else None
    if pretrained is not None:
        from megatron_solo.evaluation.hf_backend import HFBackend

        return HFBackend(pretrained, DTYPES[dtype], max_side)
    from megatron_solo.evaluation.megatron_backend import MegatronBackend

    return MegatronBackend(checkpoint, None, DTYPES[dtype], max_side)


class SoloLMM(lmms):
    """SOLO for lmms-eval (model_args: pretrained= or checkpoint=, dtype=, max_side=, template=, batch_tokens=)."""

    def __init__(self, pretrained: str | None = None, checkpoint: str | None = None, dtype: str = "float32",
                 max_side: int | None = None, template: str | None = None, batch_tokens: int = 8192,
                 max_batch: int = 64, **kwargs) -> None:
        """Load the model through the backend its argument names."""
        super().__init__()
        self.backend = _backend(pretrained, checkpoint, dtype, max_side)
        self.template = template or self.backend.template
        self.batching = {"batch_tokens": int(batch_tokens), "max_batch": int(max_batch), "progress": False}
        self._rank, self._world_size = 0, 1

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _prompt(self, context: str, doc_to_visual, task: str, split: str, doc_id: int):
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual else []
        images = [v for v in (visuals or []) if v is not None]
        return encode_image_prompt(self.backend.processor, context, images, self.template == CHAT_TEMPLATE,
                                   f"{task}/{split} doc {doc_id}")

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """(log p(continuation | context, images), is the continuation the greedy one) of each request."""
        tok, args = self.backend.tokenizer, [r.args for r in requests]
        prompts, conts = [], []
        for context, target, doc_to_visual, doc_id, task, split in args:
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            prompts.append(self._prompt(context, doc_to_visual, task, split, doc_id))
            # SentencePiece puts the word boundary back in front of the first word itself
            conts.append(tok.encode(continuation.lstrip()))
        lengths = [len(p[0]) + len(c) for p, c in zip(prompts, conts)]
        scores = score_documents(self.backend, lengths, lambda i: continuation_doc(prompts[i][0], conts[i],
                                                                                   prompts[i][1]),
                                 sort=True, desc="lmms loglikelihood", **self.batching)
        greedy = self._generate([len(p[0]) for p in prompts], lambda i: prompt_doc(*prompts[i]),
                                max(map(len, conts)))
        return [(score, greedy[i][:len(conts[i])] == conts[i]) for i, (score, _) in enumerate(scores)]

    def _generate(self, lengths: list[int], load, max_new_tokens: int) -> list[list[int]]:
        # a greedy run that ends (eos) before the continuation does is shorter: not the continuation
        return generate_documents(self.backend, lengths, load, max_new_tokens, self.backend.tokenizer.eos_id,
                                  desc="lmms greedy check", **self.batching)

    def generate_until(self, requests: list[Instance]) -> list[str]:
        """Greedy answers, cut at the task's ``until`` strings."""
        out: list[str] = []
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in (r.args for r in requests):
            prompt = prompt_doc(*self._prompt(context, doc_to_visual, task, split, doc_id))
            new = int(gen_kwargs.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
            tokens = generate_documents(self.backend, [len(prompt)], lambda i, doc=prompt: doc, new,
                                        self.backend.tokenizer.eos_id, desc="lmms generate", **self.batching)[0]
            text = self.backend.processor.decode(tokens)
            until = gen_kwargs.get("until") or []
            for stop in [until] if isinstance(until, str) else until:
                text = text.split(stop)[0] if stop else text
            out.append(text)
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        """Not offered: SOLO's benchmarks are single-round."""
        raise NotImplementedError("the solo model answers single-round tasks only")
