#!/usr/bin/env bash
# End to end on one CPU machine, and visibly learning: scikit-learn's handwritten digits -> shards with a
# held-out fifth -> SOLO pre-training (megatron-core, validation loss as it trains) -> held-out accuracy
# next to logistic regression on the same pixels -> export to stock transformers -> the exported model
# names a held-out digit. About 4 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${WORK:-work_dirs/quickstart}
STEPS=${STEPS:-300}
rm -rf "$W"
python tools/make_demo_data.py --out "$W/raw" --text-limit 200
# Each 8x8 digit becomes one 32x32 patch (SOLO's resize rule); the caption is its class name ("digit 3").
python tools/preprocess_data.py --kind classification --input "$W/raw/digits" --class-names "$W/raw/digit_names.json" \
  --caption-template "{}" --image-format png --holdout 0.2 --output "$W/shards/digits" --quiet > "$W/preprocess.json"
# solo-tiny (4 layers, width 64), single process; wider initial weights (std 0.1) and a short cosine
# schedule let a model this small learn the digits in a few minutes.
python tools/pretrain.py --model solo-tiny --model-overrides '{"init_method_std": 0.1}' \
  --data "$W/shards/digits" --eval-data "$W/shards/digits/heldout" --eval-interval 50 --eval-iters 2 \
  --seq-length 256 --global-batch-size 4 --train-steps "$STEPS" --lr 3e-3 --min-lr 3e-4 --warmup-steps 10 \
  --save "$W/ckpt" --save-interval "$STEPS" --tensorboard-dir "$W/tensorboard" --data-workers 1
python tools/evaluate.py --checkpoint "$W/ckpt" --classify "$W/shards/digits/heldout" \
  --baseline-train "$W/shards/digits" --val-data "$W/shards/digits/heldout" --out "$W/eval.json" --quiet
python tools/export_to_hf.py --checkpoint "$W/ckpt" --out "$W/hf"
# One held-out digit as a PNG file, and what the exported model (stock transformers) says it is.
read -r IMAGE LABEL < <(python - "$W" <<'PY'
import sys
from pathlib import Path

import numpy as np

from megatron_solo.data.shards import TOKEN_DTYPE, load_index, read_members
from megatron_solo.vocab import SoloTokenizer

w = Path(sys.argv[1])
tar = sorted((w / "shards/digits/heldout").glob("*.tar"))[0]
ix = load_index(tar)
members = read_members(tar, int(ix.offset[0]), int(ix.end[0]), str(ix.keys[0]))
(w / "heldout_digit.png").write_bytes(members["0.png"])
text = np.frombuffer(members["tok"], dtype=TOKEN_DTYPE)  # <s> caption </s>
print(w / "heldout_digit.png", SoloTokenizer().decode(text[1:-1].tolist()).split()[-1])
PY
)
ANSWER=$(python tools/generate.py --model "$W/hf" --image "$IMAGE" --prompt "digit" --max-new-tokens 3)
echo "held-out image of a $LABEL ($IMAGE): asked to complete 'digit', the exported model says '$ANSWER'"
echo "quick start done: checkpoints in $W/ckpt, Hugging Face model in $W/hf, report in $W/eval.json," \
  "logs and loss_curve.png in $W/tensorboard"
