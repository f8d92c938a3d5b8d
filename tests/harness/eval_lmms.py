"""Run in lmms-eval's environment: the ``solo`` model's loglikelihood on a few requests, written as JSON.

``python -m tests.harness.eval_lmms EXPORT IMAGE OUT.json``: each request is (context about IMAGE,
continuation), passed to ``SoloLMM.loglikelihood`` as lmms-eval's evaluator passes them (Instances whose
arguments name the document by task, split and id).
"""

from __future__ import annotations

import json
import sys

REQUESTS = [("Is there a cat in this image?\nAnswer:", " Yes"), ("Is there a cat in this image?\nAnswer:", " No"),
            ("What is in the picture?", " a cat sitting on a blanket")]


def main(export: str, image: str, out: str) -> None:
    """Score REQUESTS with the solo model and write [[logprob, is_greedy], ...] to ``out``."""
    from lmms_eval.api.instance import Instance
    from PIL import Image

    from megatron_solo.evaluation.lmms_model import SoloLMM

    model = SoloLMM(pretrained=export, max_side="64")
    model.task_dict = {"local": {"test": [{"image": Image.open(image).convert("RGB")}]}}
    requests = [Instance("loglikelihood", (ctx, cont, lambda doc: [doc["image"]], 0, "local", "test"), idx=k,
                         metadata={"task": "local", "doc_id": 0, "repeats": 1})
                for k, (ctx, cont) in enumerate(REQUESTS)]
    with open(out, "w") as f:
        json.dump([list(r) for r in model.loglikelihood(requests)], f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
